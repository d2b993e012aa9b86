"""Each trainer-dump reader on small fixtures written here from the documented fields.

Expected values are worked out in the tests themselves, per row, from the fixture's own lists
(plain Python), never from the reader's code: lengths, loss masks, per-token advantages, uids.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_advantages import loop_advantages
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.core.batch import StepBatch, text_uid
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts

runner = CliRunner()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_all(path: Path, **options: Any) -> list[StepBatch]:
    return list(open_rollouts(str(path), **options).iter_steps())


def per_row(batch: StepBatch) -> list[tuple[str | None, list[bool], list[float]]]:
    offsets = batch.offsets.tolist()
    uids = batch.row_uids()
    mask, adv = batch.loss_mask.tolist(), batch.advantages.tolist()
    return [(uids[i], mask[offsets[i] : offsets[i + 1]], adv[offsets[i] : offsets[i + 1]]) for i in range(batch.n_sequences)]


def cli_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), result.stderr
    return lines[0]


def estimate(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


# ---- verl -------------------------------------------------------------------------------------------
VERL_ROWS = [  # balance_batch order: the samples of a prompt are not contiguous
    {"input": "Q1", "output": "abcdefgh", "score": 1.0, "step": 5, "acc": True},
    {"input": "Q2", "output": "abc", "score": 0.0, "step": 5, "acc": False},
    {"input": "Q1", "output": "", "score": 0.0, "step": 5, "acc": False},
    {"input": "Q2", "output": "ééééé", "score": 1.0, "step": 5, "acc": True},
    {"input": "Q1", "output": "x" * 9, "score": 0.0, "step": 5, "acc": False},
    {"input": "Q3", "output": "y", "score": 0.5, "step": 5, "acc": True},
]


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_verl_groups_out_of_order_and_rebuilt_advantages(tmp_path: Path, estimator: str) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    (batch,) = read_all(path, advantage=estimator)
    assert batch.step == 5 and batch.lengths_estimated
    rewards = [r["score"] for r in VERL_ROWS]
    groups = [r["input"] for r in VERL_ROWS]
    expected_adv = loop_advantages(rewards, [groups.index(g) for g in groups], estimator)
    # lengths: ceil(bytes / 4): 8 -> 2, 3 -> 1, 0 -> 0, "ééééé" 10 bytes -> 3, 9 -> 3, 1 -> 1
    assert [len(m) for _, m, _ in per_row(batch)] == [2, 1, 0, 3, 3, 1]
    for (uid, mask, adv), record, want in zip(per_row(batch), VERL_ROWS, expected_adv, strict=True):
        assert uid == text_uid(record["input"])
        assert all(mask)
        assert adv == pytest.approx([want] * len(adv), rel=1e-12)
    assert batch.n_groups == 3 and batch.rewards is not None and batch.rewards.tolist() == rewards


def test_verl_default_is_grpo_and_reward_col_picks_an_extra(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    (batch,) = read_all(path, reward_col="acc")  # booleans read as 1/0
    acc = [float(r["acc"]) for r in VERL_ROWS]
    groups = [r["input"] for r in VERL_ROWS]
    want = loop_advantages(acc, [groups.index(g) for g in groups], "grpo")
    firsts = [adv[0] if adv else None for _, _, adv in per_row(batch)]
    assert batch.rewards is not None and batch.rewards.tolist() == acc
    assert [f for f in firsts if f is not None] == pytest.approx(
        [w for w, f in zip(want, firsts, strict=True) if f is not None], rel=1e-12
    )


def test_verl_uid_field_wins_over_text(tmp_path: Path) -> None:
    rows = [dict(r, uid=f"u{i % 2}") for i, r in enumerate(VERL_ROWS)]
    (batch,) = read_all(write_jsonl(tmp_path / "5.jsonl", rows))
    assert batch.row_uids() == ["u0", "u1"] * 3
    assert batch.uid_texts == ("Q1", "Q3")  # each uid's prompt text: its last row's (rows 1, 3, 5: Q2, Q2, Q3)
    (hashed,) = read_all(write_jsonl(tmp_path / "6.jsonl", VERL_ROWS))
    assert hashed.uid_texts == ("Q1", "Q2", "Q3") and hashed.uid_labels == tuple(text_uid(q) for q in ("Q1", "Q2", "Q3"))


def test_verl_steps_from_field_or_name_and_text_behind_uid(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dump" / "1.jsonl", [{k: v for k, v in r.items() if k != "step"} for r in VERL_ROWS[:2]])
    write_jsonl(tmp_path / "dump" / "2.jsonl", [{k: v for k, v in r.items() if k != "step"} for r in VERL_ROWS[2:]])
    rollouts = open_rollouts(str(tmp_path / "dump"))
    assert rollouts.steps == [1, 2] and rollouts.format == "verl"
    result = runner.invoke(app, ["inspect", str(tmp_path / "dump"), "--uid", text_uid("Q1"), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["text"] == "Q1" and found["lengths_estimated"] is True
    assert [(o["step"], o["rows"]) for o in found["occurrences"]] == [(1, [0]), (2, [0, 2])]


def test_verl_file_with_two_steps_names_the_line(tmp_path: Path) -> None:
    rows = [dict(VERL_ROWS[0]), dict(VERL_ROWS[1], step=6)]
    message = cli_error("inspect", str(write_jsonl(tmp_path / "5.jsonl", rows)))
    assert "5.jsonl: line 2: step 6 differs from step 5" in message


def test_verl_truncated_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS[:2])
    path.write_text(path.read_text() + '{"input": "Q9", "outp')  # a writer killed mid-line
    message = cli_error("weights", str(path), "--format", "verl")
    assert f"{path}: line 3: not valid JSON (Unterminated string starting at column 17)" in message and "cut short" in message


def test_verl_wrong_type_and_missing_field(tmp_path: Path) -> None:
    bad_type = write_jsonl(tmp_path / "a" / "5.jsonl", [VERL_ROWS[0], dict(VERL_ROWS[1], score="high")])
    assert "5.jsonl: line 2: field 'score' is a string ('high'); expected a number" in cli_error("inspect", str(bad_type))
    missing = write_jsonl(tmp_path / "b" / "5.jsonl", [VERL_ROWS[0], {k: v for k, v in VERL_ROWS[1].items() if k != "output"}])
    assert "5.jsonl: line 2: no value for 'output'" in cli_error("inspect", str(missing))
    not_object = tmp_path / "c" / "5.jsonl"
    not_object.parent.mkdir()
    not_object.write_text(json.dumps(VERL_ROWS[0]) + "\n[1, 2]\n")
    assert "line 2: expected one JSON object per line, got a list" in cli_error("inspect", str(not_object), "--format", "verl")


# ---- TRL --------------------------------------------------------------------------------------------
def trl_table(step: int, advantage: bool = True) -> pa.Table:
    columns: dict[str, Any] = {
        "step": [step] * 4,
        "prompt": ["P1", "P1", "P2", "P2"],
        "completion": ["abcd", "abcdefgh", "", "xyz"],
        "accuracy_reward": [1.0, 0.0, float("nan"), 1.0],
        "format_reward": [0.5, 0.5, 0.0, 0.25],
        "solution": ["1", "1", "2", "2"],
    }
    if advantage:
        columns["advantage"] = [0.7, -0.7, -0.1, 0.1]
    return pa.table(columns)


def test_trl_reward_sum_advantage_column_and_steps(tmp_path: Path) -> None:
    folder = tmp_path / "completions"
    folder.mkdir()
    pq.write_table(trl_table(10), folder / "completions_00010.parquet")
    pq.write_table(trl_table(20), folder / "completions_00020.parquet")
    rollouts = open_rollouts(str(folder))
    assert rollouts.format == "trl" and rollouts.steps == [10, 20]
    batch = next(rollouts.iter_steps())
    # reward = nansum(accuracy_reward, format_reward): 1.5, 0.5, 0 + 0 (NaN skipped), 1.25
    assert batch.rewards is not None and batch.rewards.tolist() == [1.5, 0.5, 0.0, 1.25]
    rows = per_row(batch)
    assert [len(m) for _, m, _ in rows] == [1, 2, 0, 1]  # ceil(4/4), ceil(8/4), 0, ceil(3/4)
    assert [adv for _, _, adv in rows] == [[pytest.approx(0.7)], [pytest.approx(-0.7)] * 2, [], [pytest.approx(0.1)]]
    assert [uid for uid, _, _ in rows] == [text_uid("P1")] * 2 + [text_uid("P2")] * 2
    (one,) = [b for b in read_all(folder, reward_col="format_reward") if b.step == 10]
    assert one.rewards is not None and one.rewards.tolist() == [0.5, 0.5, 0.0, 0.25]


def test_trl_without_advantage_column_rebuilds_grpo(tmp_path: Path) -> None:
    pq.write_table(trl_table(3, advantage=False), tmp_path / "completions_00003.parquet")
    (batch,) = read_all(tmp_path / "completions_00003.parquet")
    want = loop_advantages([1.5, 0.5, 0.0, 1.25], [0, 0, 1, 1], "grpo")
    assert [adv[0] for _, _, adv in per_row(batch) if adv] == pytest.approx([want[0], want[1], want[3]], rel=1e-12)


# ---- NeMo-RL ----------------------------------------------------------------------------------------
def nemo_record(prompt: list[int], response: list[int], adv: float, reward: float, keep: float = 1.0, width: int = 8) -> dict:
    tokens = prompt + response
    pad = width - len(tokens)
    mask = [0] * len(prompt) + [1] * len(response)
    return {
        "content": ["..."],
        "rewards": reward,
        "input_lengths": len(tokens),
        "token_ids": tokens + [0] * pad,
        "token_loss_mask": mask + [0] * pad,
        "sample_loss_mask": keep,
        "advantages": [adv] * width,  # NeMo-RL broadcasts over padding too: must be cut off
    }


def test_nemo_rl_runs_of_prompts_dropped_sample_and_padding(tmp_path: Path) -> None:
    a, b = [11, 12, 13], [21, 22]
    rows = [
        nemo_record(a, [1, 2], 0.5, 1.0),
        nemo_record(a, [3], -0.5, 0.0),
        nemo_record(b, [4, 5, 6], 1.0, 1.0),
        nemo_record(b, [7], 0.0, 0.0, keep=0.0),  # dropped: stays a row, no loss token
        nemo_record(a, [8, 9], 0.25, 1.0),  # prompt a again, a new run: its own group
    ]
    path = write_jsonl(tmp_path / "train_data_step3.jsonl", rows)
    write_jsonl(tmp_path / "train_data_step4.jsonl", rows[:2])
    write_jsonl(tmp_path / "val_data_step3.jsonl", rows[:1])  # validation logs are not training data
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.format == "nemo-rl" and rollouts.steps == [3, 4]
    batch, later = list(rollouts.iter_steps())
    uid_a = hashlib.sha1(np.asarray(a, dtype=np.int64).tobytes()).hexdigest()[:12]
    uid_b = hashlib.sha1(np.asarray(b, dtype=np.int64).tobytes()).hexdigest()[:12]
    assert batch.row_uids() == [uid_a, uid_a, uid_b, uid_b, uid_a + "#2"]
    assert later.row_uids()[0] == uid_a  # the same prompt gets the same uid in every step
    got = per_row(batch)
    assert [len(m) for _, m, _ in got] == [5, 4, 5, 3, 5]  # input_lengths: the padding is cut off
    assert [sum(m) for _, m, _ in got] == [2, 1, 3, 0, 2]
    assert got[0][2] == [0.5] * 5 and got[3][1] == [False] * 3
    assert batch.rewards is not None and batch.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert path.exists()


def test_nemo_rl_mismatched_lengths_name_the_line(tmp_path: Path) -> None:
    good = nemo_record([1], [2], 1.0, 1.0)
    bad = dict(good, advantages=[1.0] * 5)
    path = write_jsonl(tmp_path / "train_data_step1.jsonl", [good, bad])
    assert "train_data_step1.jsonl: line 2: 'advantages' has 5 values but 'token_loss_mask' has 8" in cli_error(
        "inspect", str(path)
    )


# ---- prime-rl ---------------------------------------------------------------------------------------
def test_prime_rl_packed_rows_split_on_position_restarts(tmp_path: Path) -> None:
    root = tmp_path / "token_exports"
    packed = {"step": 1, "rank": 2, "micro_step": 0, "token_ids": list(range(9)), "position_ids": [0, 1, 2, 0, 1, 0, 1, 2, 3],
              "loss_mask": [False, True, True, False, True, False, False, True, True],
              "advantages": [0.0, 1.0, 1.0, 0.0, -2.0, 0.0, 0.0, 0.5, 0.5]}  # fmt: skip
    single = {
        "step": 1,
        "rank": 10,
        "micro_step": 0,
        "token_ids": [5, 6],
        "position_ids": [0, 1],
        "loss_mask": [0, 1],
        "advantages": [0.0, 3.0],
    }
    write_jsonl(root / "step_1" / "rank_10.jsonl", [single])
    write_jsonl(root / "step_1" / "rank_2.jsonl", [packed])  # natural order: rank 2 before rank 10
    (root / "step_1" / "STABLE").touch()
    write_jsonl(root / "step_2" / "rank_0.jsonl", [single])  # no STABLE marker yet
    rollouts = open_rollouts(str(root))
    assert rollouts.format == "prime-rl" and rollouts.steps == [1, 2] and not rollouts.has_groups
    assert any("step 2: no STABLE marker" in n for n in rollouts.notes)
    batch = rollouts.read_step(1)
    got = per_row(batch)
    assert [len(m) for _, m, _ in got] == [3, 2, 4, 2]
    assert [m for _, m, _ in got] == [[False, True, True], [False, True], [False, False, True, True], [False, True]]
    assert got[3][2] == [0.0, 3.0] and batch.group_ids is None
    message = cli_error("weights", str(root), "-m", "prompt_mean")
    assert "prompt_mean" in message


# ---- Atropos ----------------------------------------------------------------------------------------
def test_atropos_minus_100_masks_lines_as_groups_and_given_advantages(tmp_path: Path) -> None:
    line1 = {"tokens": [[1, 2, 3], [1, 2, 4, 5]], "masks": [[-100, 2, 3], [-100, -100, 4, 5]], "scores": [1.0, 0.0]}
    line2 = {"tokens": [[7, 8], [7, 9], [7, 0]], "masks": [[-100, 8], [-100, 9], [-100, 0]], "scores": [0, 0, 0],
             "advantages": [[0.0, 0.3], [0.0, -0.1], [0.0, 0.2]]}  # fmt: skip
    path = write_jsonl(tmp_path / "groups.jsonl", [line1, line2])
    (batch,) = read_all(path)
    got = per_row(batch)
    assert [u for u, _, _ in got] == ["groups:1"] * 2 + ["groups:2"] * 3
    # a mask of -100 is not trained; any other value (the token id, even 0) is
    assert [m for _, m, _ in got] == [
        [False, True, True],
        [False, False, True, True],
        [False, True],
        [False, True],
        [False, True],
    ]
    g = loop_advantages([1.0, 0.0], [0, 0], "grpo")  # line 1 has no advantages: GRPO of its scores
    assert got[0][2] == [0.0, pytest.approx(g[0]), pytest.approx(g[0])]
    assert got[1][2] == [0.0, 0.0, pytest.approx(g[1]), pytest.approx(g[1])]
    assert [a for _, _, a in got[2:]] == [[0.0, 0.3], [0.0, -0.1], [0.0, 0.2]]


def test_atropos_mismatched_masks_and_scores(tmp_path: Path) -> None:
    good = {"tokens": [[1, 2]], "masks": [[-100, 2]], "scores": [1.0]}
    bad_mask = {"tokens": [[1, 2], [3, 4, 5]], "masks": [[-100, 2], [-100, 4]], "scores": [1.0, 0.0]}
    path = write_jsonl(tmp_path / "a.jsonl", [good, bad_mask])
    assert "a.jsonl: line 2: sample 1: 'masks' has 2 tokens but there are 3 tokens" in cli_error("inspect", str(path))
    bad_scores = {"tokens": [[1, 2], [3, 4]], "masks": [[-100, 2], [-100, 4]], "scores": [1.0]}
    path = write_jsonl(tmp_path / "b.jsonl", [good, bad_scores])
    assert "b.jsonl: line 2: 'scores' has 1 scores but there are 2 samples" in cli_error("inspect", str(path))


# ---- slime ------------------------------------------------------------------------------------------
def slime_sample(group: int, length: int, reward: Any, mask: list[int] | None = None, removed: bool = False) -> dict:
    return {"group_index": group, "index": 0, "prompt": "p", "tokens": [9] * (4 + length), "response": "r",
            "response_length": length, "label": None, "reward": reward, "loss_mask": mask, "status": "completed",
            "remove_sample": removed, "metadata": {}}  # fmt: skip


def test_slime_rollout_dump(tmp_path: Path) -> None:
    samples = [
        slime_sample(0, 3, 1.0, [1, 0, 1]),
        slime_sample(0, 2, 0.0),
        slime_sample(1, 2, 1.0, removed=True),  # removed: stays a row with no loss token
        slime_sample(1, 1, 0.0, [1]),
    ]
    torch.save({"rollout_id": 7, "samples": samples}, tmp_path / "7.pt")
    torch.save({"rollout_id": 7, "samples": samples[:1]}, tmp_path / "eval_7.pt")  # evaluation rollouts: skipped
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.format == "slime" and rollouts.steps == [7]
    (batch,) = list(rollouts.iter_steps())
    got = per_row(batch)
    want = loop_advantages([1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1], "grpo")
    assert [m for _, m, _ in got] == [[True, False, True], [True, True], [False, False], [True]]
    assert got[0][2] == [pytest.approx(want[0]), 0.0, pytest.approx(want[0])]
    assert got[3][2] == [pytest.approx(want[3])] and [u for u, _, _ in got] == ["0", "0", "1", "1"]


def test_slime_reward_dict_needs_a_key(tmp_path: Path) -> None:
    torch.save({"rollout_id": 1, "samples": [slime_sample(0, 1, {"acc": 1.0, "len": 0.2})]}, tmp_path / "1.pt")
    assert "the reward is a dict (acc, len); choose a key with --reward-col" in cli_error("inspect", str(tmp_path / "1.pt"))
    (batch,) = read_all(tmp_path / "1.pt", reward_col="len")
    assert batch.rewards is not None and batch.rewards.tolist() == [0.2]


# ---- SkyRL ------------------------------------------------------------------------------------------
class StandInTrainingInputBatch(dict):
    """The pickled shape of SkyRL's TrainingInputBatch: a dict of tensors, a metadata dict, and a
    __getstate__ that stores each tensor as torch.save bytes."""

    metadata: dict | None = None

    def __getstate__(self) -> dict:
        blobs = {}
        for key, value in self.items():
            buffer = __import__("io").BytesIO()
            torch.save(value, buffer)
            blobs[key] = buffer.getvalue()
        return {
            "batch_dict": blobs,
            "batch_size": len(next(iter(self.values()))),
            "device": torch.device("cpu"),
            "metadata": self.metadata,
        }

    def __setstate__(self, state: dict) -> None:
        for key, blob in state["batch_dict"].items():
            self[key] = torch.load(__import__("io").BytesIO(blob))
        self.metadata = state["metadata"]


@pytest.fixture
def stand_in_skyrl(monkeypatch: pytest.MonkeyPatch) -> type:
    package, module = types.ModuleType("skyrl_train"), types.ModuleType("skyrl_train.training_batch")
    StandInTrainingInputBatch.__module__ = "skyrl_train.training_batch"
    StandInTrainingInputBatch.__qualname__ = "TrainingInputBatch"
    module.TrainingInputBatch = StandInTrainingInputBatch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyrl_train", package)
    monkeypatch.setitem(sys.modules, "skyrl_train.training_batch", module)
    return StandInTrainingInputBatch


def skyrl_dump(path: Path, cls: type, metadata: dict) -> Path:
    batch = cls(
        {
            "loss_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]),  # left-padded
            "advantages": torch.tensor([[0.0, 0.0, 1.5, 1.5], [0.0, -1.0, -1.0, -1.0], [9.0, 0.0, 0.0, 2.0], [0.5] * 4]),
            "rewards": torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]),
        }
    )
    batch.metadata = metadata
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return path


def test_skyrl_stand_in_pickle_with_prompt_boundaries(tmp_path: Path, stand_in_skyrl: type) -> None:
    path = skyrl_dump(tmp_path / "dumped_data" / "global_step_12_training_input.pkl", stand_in_skyrl,
                      {"policy_prompt_boundaries": [(0, 2), (2, 3)], "policy_mini_batch_boundaries": [(0, 4)]})  # fmt: skip
    rollouts = open_rollouts(str(tmp_path / "dumped_data"))
    assert rollouts.format == "skyrl" and rollouts.steps == [12] and rollouts.has_groups
    (batch,) = list(rollouts.iter_steps())
    assert batch.row_uids() == ["p0", "p0", "p1", "pad:3"]  # row 3 lies after the last prompt boundary
    got = per_row(batch)
    assert [m for _, m, _ in got] == [
        [False, False, True, True],
        [False, True, True, True],
        [False, False, False, True],
        [True] * 4,
    ]
    assert got[2][2] == [9.0, 0.0, 0.0, 2.0]  # padding keeps its value; the mask decides
    assert batch.rewards is not None and batch.rewards.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert path.exists()


def test_skyrl_reads_the_same_without_skyrl_installed(
    tmp_path: Path, stand_in_skyrl: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = skyrl_dump(tmp_path / "global_step_1_training_input.pkl", stand_in_skyrl, {"uids": ["a", "a", "b", "b"]})
    (batch,) = read_all(path)
    assert batch.row_uids() == ["a", "a", "b", "b"]
    monkeypatch.delitem(sys.modules, "skyrl_train.training_batch")
    monkeypatch.delitem(sys.modules, "skyrl_train")
    (again,) = read_all(path)  # the safe loader decodes the batch itself: SkyRL is never imported
    assert again.row_uids() == batch.row_uids() and np.array_equal(np.asarray(again.advantages), np.asarray(batch.advantages))


# ---- detection and options --------------------------------------------------------------------------
def test_detection_needs_format_when_ambiguous(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    pq.write_table(trl_table(1), tmp_path / "completions_00001.parquet")
    assert "holds .jsonl, .parquet files; say which format to read with --format" in cli_error("inspect", str(tmp_path))
    assert open_rollouts(str(tmp_path), format="verl").format == "verl"
    odd = write_jsonl(tmp_path / "odd" / "x.jsonl", [{"a": 1}])
    assert "cannot tell which trainer wrote this JSON-lines file (first line has a)" in cli_error("inspect", str(odd))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "bogus"], "--format 'bogus': unknown format; choose one of parquet, trl, verl"),
        (["--advantage", "ppo"], "--advantage 'ppo': unknown estimator; choose one of grpo, dr_grpo, rloo"),
        (["--tokenizer", "tok"], "--tokenizer counts the tokens of text-only dumps (verl, trl); the atropos format holds tokens"),
        (["--col", "uid=x"], "--col uid=...: the atropos reader takes no roles from --col"),
    ],
)
def test_options_a_format_cannot_honour(tmp_path: Path, args: list[str], expected: str) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"tokens": [[1]], "masks": [[1]], "scores": [1.0]}])
    assert expected in cli_error("inspect", str(path), *args)


def test_advantage_option_is_refused_for_parquet_and_prime_rl(tmp_path: Path) -> None:
    assert "--advantage rebuilds advantages of dumps that hold only rewards" in cli_error("inspect", "--advantage", "grpo")
    path = write_jsonl(tmp_path / "step_1" / "rank_0.jsonl", [{"position_ids": [0], "loss_mask": [1], "advantages": [1.0]}])
    assert "the prime-rl format has no rewards and prompt groups" in cli_error("inspect", str(path), "--advantage", "rloo")


def test_reader_errors_are_aggscope_errors_in_the_library(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    with pytest.raises(AggscopeError, match="unknown format"):
        open_rollouts(str(path), format="openrlhf")


def test_verl_col_uid_must_name_a_field(tmp_path: Path) -> None:
    # An explicit --col is never ignored: a uid field that is not there is an error, not text grouping.
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    assert "first line has no 'nothere' field" in cli_error("inspect", str(path), "--col", "uid=nothere")


def test_a_folder_mixing_two_trainers_dumps_is_refused_up_front(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a_atropos.jsonl", [{"tokens": [[1]], "masks": [[1]], "scores": [1.0]}])
    write_jsonl(tmp_path / "b_verl" / "5.jsonl", VERL_ROWS)
    assert cli_error("weights", str(tmp_path)).endswith(
        f"{tmp_path}: mixes dumps of atropos (a_atropos.jsonl) and verl (5.jsonl); give one file or a glob of one kind"
    )
