"""The TRL ``log_completions`` Parquet reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dumps import VERL_ROWS, cli_error, per_row, read_all, trl_table, write_jsonl
from test_advantages import loop_advantages

from aggscope.core.batch import text_uid
from aggscope.io.open import open_rollouts


def test_trl_reward_sum_advantage_column_and_steps(tmp_path: Path) -> None:
    folder = tmp_path / "completions"
    folder.mkdir()
    pq.write_table(trl_table(10), folder / "completions_00010.parquet")
    pq.write_table(trl_table(20, completion="another generation"), folder / "completions_00020.parquet")
    rollouts = open_rollouts(str(folder))
    assert rollouts.format == "trl" and rollouts.steps == [10, 20]
    batch = next(rollouts.iter_steps())
    # reward = nansum(accuracy_reward, format_reward): 1.5, 0.5, 0 + 0 (NaN skipped), 1.25
    assert batch.rewards is not None and batch.rewards.tolist() == [1.5, 0.5, 0.0, 1.25]
    rows = per_row(batch)
    # ceil(4/4), ceil(8/4), 0, ceil(3/4), each + the EOS TRL trains but decodes away (the empty text: EOS only)
    assert [len(m) for _, m, _ in rows] == [2, 3, 1, 2]
    assert [adv[0] for _, _, adv in rows] == pytest.approx([0.7, -0.7, -0.1, 0.1])
    without_eos = next(open_rollouts(str(folder), eos_trained=False).iter_steps())
    assert [len(m) for _, m, _ in per_row(without_eos)] == [1, 2, 0, 1]
    assert [uid for uid, _, _ in rows] == [text_uid("P1")] * 2 + [text_uid("P2")] * 2
    (one,) = [b for b in read_all(folder, reward_col="format_reward") if b.step == 10]
    assert one.rewards is not None and one.rewards.tolist() == [0.5, 0.5, 0.0, 0.25]


def test_trl_without_advantage_column_rebuilds_grpo_as_trl(tmp_path: Path) -> None:
    pq.write_table(trl_table(3, advantage=False), tmp_path / "completions_00003.parquet")
    (batch,) = read_all(tmp_path / "completions_00003.parquet")
    # TRL: (r - nanmean) / (nanstd + 1e-4). P1: 1.5, 0.5 -> mean 1, std sqrt(0.5) -> +-0.5 / (0.70711 + 1e-4);
    # P2: 0.0, 1.25 -> mean 0.625, std sqrt(2 * 0.625^2) = 0.88388 -> +-0.625 / (0.88388 + 1e-4)
    p1, p2 = 0.5 / (0.5**0.5 + 1e-4), 0.625 / ((2 * 0.625**2) ** 0.5 + 1e-4)
    assert [adv[0] for _, _, adv in per_row(batch)] == pytest.approx([p1, -p1, -p2, p2], rel=1e-12)
    with pytest.raises(AssertionError):  # not verl's formula (epsilon 1e-6)
        assert loop_advantages([1.5, 0.5, 0.0, 1.25], [0, 0, 1, 1], "grpo")[0] == pytest.approx(p1, rel=1e-9)


def chat(*messages: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def test_trl_conversational_rows_are_read_as_their_messages(tmp_path: Path) -> None:
    system, question = ("system", "be brief"), ("user", "2+2?")
    table = pa.table(
        {
            "step": [1, 1, 1],
            "prompt": [chat(system, question), chat(system, question), chat(("user", "2+2?"))],
            "completion": [chat(("assistant", "abcd")), chat(("assistant", "")), chat(("assistant", "abcdefgh"))],
            "advantage": [0.5, -0.5, 0.0],
        }
    )
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    rollouts = open_rollouts(str(tmp_path))
    (batch,) = rollouts.iter_steps()
    rows = per_row(batch)
    # the completion's content alone is what TRL decoded: ceil(4/4) + EOS, 0 + EOS (EOS only: 1 token), ceil(8/4) + EOS
    assert [len(m) for _, m, _ in rows] == [2, 1, 3]
    uids = [uid for uid, _, _ in rows]
    assert uids[0] == uids[1] != uids[2]  # one group per message list: the system message tells them apart
    assert batch.uid_texts is not None and "system: be brief\nuser: 2+2?" in batch.uid_texts


def test_trl_unknown_list_type_is_one_line(tmp_path: Path) -> None:
    table = pa.table({"step": [1], "prompt": [[1, 2]], "completion": ["x"], "advantage": [0.0]})
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    message = cli_error("inspect", str(tmp_path), "--format", "trl")
    assert "column 'prompt' has type list<element: int64>; expected text or chat messages (role, content)" in message


def test_trl_advantage_column_of_text_is_one_line(tmp_path: Path) -> None:
    table = trl_table(1).drop_columns(["advantage"]).append_column("advantage", pa.array(["a", "b", "c", "d"]))
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    message = cli_error("weights", str(tmp_path), "--format", "trl")
    assert message.endswith("completions_00001.parquet: column 'advantage' has type string; expected numbers")


def test_trl_files_that_disagree_name_the_file_that_has_the_column(tmp_path: Path) -> None:
    pq.write_table(trl_table(1), tmp_path / "completions_00001.parquet")
    pq.write_table(trl_table(2).drop_columns(["format_reward"]), tmp_path / "completions_00002.parquet")
    message = cli_error("weights", str(tmp_path), "--format", "trl")
    assert message.endswith(
        f"completions_00002.parquet: no 'format_reward' column, which {tmp_path / 'completions_00001.parquet'} has"
    )


def test_trl_nan_rewards_stay_missing_and_get_trl_advantages(tmp_path: Path) -> None:
    nan = float("nan")
    table = pa.table(
        {
            "step": [1] * 4,
            "prompt": ["P"] * 4,
            "completion": ["a", "b", "c", "d"],
            "correct": [1.0, nan, 0.0, nan],
            "format": [nan, nan, 0.5, 1.0],
        }
    )
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    (batch,) = read_all(tmp_path)
    assert batch.rewards is not None
    rewards = batch.rewards.tolist()
    assert rewards[0] == 1.0 and np.isnan(rewards[1]) and rewards[2:] == [0.5, 1.0]  # row 1: every function returned None
    # TRL: mean and std over the 3 scored rows (1, 0.5, 1): mean 5/6, std sqrt(1/12); row 1 gets 0
    mean, std = 5 / 6, (((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2) ** 0.5
    want = [(1 - mean) / (std + 1e-4), 0.0, (0.5 - mean) / (std + 1e-4), (1 - mean) / (std + 1e-4)]
    assert [adv[0] for _, _, adv in per_row(batch)] == pytest.approx(want, rel=1e-12)


def test_trl_repeated_generation_files_are_read_once(tmp_path: Path) -> None:
    for step in (1, 2):  # steps_per_generation = 2 x gradient_accumulation_steps: one generation, two files
        pq.write_table(trl_table(step), tmp_path / f"completions_{step:05d}.parquet")
    pq.write_table(trl_table(3, completion="next generation"), tmp_path / "completions_00003.parquet")
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.steps == [1, 3]
    assert any("step 1 (also 2)" in note and "read once" in note for note in rollouts.notes)
    assert any("repeated generation" in fact.fact for fact in rollouts.unrecoverable)


def test_trl_unrecoverable_names_what_the_dump_lacks(tmp_path: Path) -> None:
    pq.write_table(trl_table(1), tmp_path / "completions_00001.parquet")
    pq.write_table(trl_table(3, completion="x"), tmp_path / "completions_00003.parquet")
    facts = {fact.fact.split(" (")[0]: fact for fact in open_rollouts(str(tmp_path)).unrecoverable}
    shuffle = next(fact for key, fact in facts.items() if key.startswith("the order TRL shuffles"))
    assert shuffle.modes == ("token_mean_legacy",)
    assert any("mask_truncated_completions" in key for key in facts)
    assert any(
        "num_iterations > 1, or steps_per_generation > gradient_accumulation_steps" in fact.fact for fact in facts.values()
    )
    assert any("steps 2 are not in this dump" in fact.affects for fact in facts.values())  # logging_steps > 1
    assert any("cut at max_completion_length" in key for key in facts)  # no --max-completion-length
    assert any(key == "the completions' token ids" for key in facts)  # no --tokenizer: estimated
    exact = {f.fact for f in open_rollouts(str(tmp_path), max_completion_length=8).unrecoverable}
    assert not any("cut at max_completion_length" in fact for fact in exact)


def test_trl_max_completion_length_drops_the_eos_of_cut_completions(tmp_path: Path) -> None:
    pq.write_table(trl_table(1), tmp_path / "completions_00001.parquet")
    (batch,) = read_all(tmp_path, max_completion_length=2)
    # text tokens 1, 2, 0, 1: the one of 2 tokens reached the cap (no EOS), the others ended with one
    assert [len(m) for _, m, _ in per_row(batch)] == [2, 2, 1, 2]


def test_eos_options_are_for_trl_only(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "1.jsonl", VERL_ROWS)
    assert "--eos-trained applies to TRL completions files" in cli_error("inspect", str(path), "--eos-trained")
    message = cli_error("inspect", str(path), "--max-completion-length", "8")
    assert "--max-completion-length applies to TRL completions files" in message


def test_trl_unscorable_rows_are_not_zero_advantage_findings(tmp_path: Path) -> None:
    from aggscope.analysis.checks import check_step

    nan = float("nan")
    table = pa.table(
        {"step": [1] * 3, "prompt": ["P"] * 3, "completion": ["a", "b", "c"], "r": [1.0, 0.0, nan], "advantage": [0.7, -0.7, 0.0]}
    )
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    (batch,) = read_all(tmp_path)
    # row 2: its reward function returned None; TRL gives it advantage 0 on purpose
    assert not [f for f in check_step(batch, ["token_mean"]).findings if f.code == "zero_advantage"]


def test_trl_the_same_prompt_in_two_groups_is_two_groups(tmp_path: Path) -> None:
    table = pa.table(
        {
            "step": [1] * 6,
            "prompt": ["A", "A", "B", "B", "A", "A"],  # TRL's order: num_generations rows per prompt, A drawn twice
            "completion": ["x"] * 6,
            "r": [1.0, 0.0, 1.0, 0.0, 1.0, 1.0],
        }
    )
    pq.write_table(table, tmp_path / "completions_00001.parquet")
    (batch,) = read_all(tmp_path)
    a = text_uid("A")
    assert list(batch.row_uids()) == [a, a, text_uid("B"), text_uid("B"), f"{a}#1", f"{a}#1"]
    # the second A group has rewards 1, 1: advantage 0 (one group of four would give it +0.43 each)
    assert [adv[0] for _, _, adv in per_row(batch)][4:] == [0.0, 0.0]


def test_trl_config_gives_the_completion_cap(tmp_path: Path) -> None:
    # The config's max_completion_length 2 does what --max-completion-length 2 does: the 2-token
    # completion reached the cap (no EOS to count); a larger explicit cap still wins over the config.
    import json

    from dumps import runner

    from aggscope.cli import app

    pq.write_table(trl_table(1), tmp_path / "completions_00001.parquet")
    config = tmp_path / "grpo_config.json"
    settings = {"per_device_train_batch_size": 4, "num_generations": 2, "gradient_accumulation_steps": 1}
    config.write_text(json.dumps({**settings, "max_completion_length": 2, "loss_type": "dapo"}))

    def loss_tokens(*extra: str) -> int:
        done = runner.invoke(app, ["weights", str(tmp_path), "--json", "--config", str(config), *extra])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)["steps"][0]["loss_tokens"]

    from_config, explicit, uncapped = (
        loss_tokens(),
        loss_tokens("--max-completion-length", "2"),
        loss_tokens("--max-completion-length", "100"),
    )
    assert from_config == explicit == 7  # lengths 2, 2, 1, 2 (test above)
    assert uncapped == 8  # every completion's EOS counted: 2, 3, 1, 2
