"""The verl ``rollout_data_dir`` dumps reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from dumps import VERL_ROWS, cli_error, per_row, read_all, runner, write_jsonl
from test_advantages import loop_advantages

import aggscope.io.readers.verl as verl_module
from aggscope.cli import app
from aggscope.core.batch import text_uid
from aggscope.io.open import open_rollouts


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


def test_verl_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first file, read at open for the tool responses it holds, is not read again for its step."""
    paths = [write_jsonl(tmp_path / f"{step}.jsonl", [{**row, "step": step} for row in VERL_ROWS]) for step in (5, 6)]
    expected = read_all(paths[0])[0].stats.loss_tokens.tolist()
    read = verl_module.read_jsonl
    seen: list[str] = []
    monkeypatch.setattr(verl_module, "read_jsonl", lambda path, fields: seen.append(Path(path).name) or read(path, fields))
    rollouts = open_rollouts(str(tmp_path))
    shipped = pickle.loads(pickle.dumps(rollouts))  # as for a Ray task: without the file open read
    batches = list(rollouts.iter_steps())
    assert [b.step for b in batches] == [5, 6] and seen == ["5.jsonl", "6.jsonl"]
    assert batches[0].stats.loss_tokens.tolist() == expected
    assert shipped.read_step(5).stats.loss_tokens.tolist() == expected
    assert seen[2:] == ["5.jsonl"]  # the copy read it for itself


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


def test_verl_col_uid_must_name_a_field(tmp_path: Path) -> None:
    # An explicit --col is never ignored: a uid field that is not there is an error, not text grouping.
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    assert "first line has no 'nothere' field" in cli_error("inspect", str(path), "--col", "uid=nothere")
