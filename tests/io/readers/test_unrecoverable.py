"""Every dump reader says what its format cannot tell (``Rollouts.unrecoverable``), on every output."""

from __future__ import annotations

import json
from pathlib import Path

from dumps import VERL_ROWS, runner, write_jsonl

from aggscope.cli import app
from aggscope.io.readers.facts import DUMP_FACTS
from aggscope.io.readers.verl import verl_unrecoverable


def test_the_formats_without_their_own_list_get_one() -> None:
    assert set(DUMP_FACTS) == {"nemo-rl", "prime-rl", "atropos", "slime"}
    for facts in DUMP_FACTS.values():
        assert facts and all(fact.fact and fact.affects for fact in facts)


def test_atropos_says_a_step_is_a_file(tmp_path: Path) -> None:
    line = {"tokens": [[1, 2, 3], [1, 2]], "masks": [[-100, 2, 3], [-100, 2]], "scores": [1.0, 0.0]}
    path = write_jsonl(tmp_path / "groups.jsonl", [line])
    result = runner.invoke(app, ["inspect", str(path), "--format", "atropos", "--json"])
    assert result.exit_code == 0, result.output
    (steps, estimator) = json.loads(result.stdout)["unrecoverable"]
    assert steps["fact"].startswith("the trainer's steps and batches") and "token_sum" not in steps["modes"]
    assert "sequence_mean" in steps["modes"] and estimator["modes"] == []


def test_inspect_text_and_report_show_the_list(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    shown = runner.invoke(app, ["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "not in this dump (what each lack changes):" in shown.stdout
    assert "the prompt uids (the classic trainer writes none)" in shown.stdout
    out = tmp_path / "report"
    made = runner.invoke(app, ["report", str(path), "-m", "token_mean", "--out", str(out)])
    assert made.exit_code == 0, made.output
    document = json.loads((out / "report.json").read_text())
    assert document["input"]["unrecoverable"] == [f.as_dict() for f in verl_unrecoverable(v1_keys=False, has_uid=False)]
    page = (out / "report.html").read_text()
    assert "Not in this dump" in page and "the prompt uids (the classic trainer writes none)" in page


def test_canonical_parquet_lists_nothing_and_keeps_what_convert_read(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    converted = tmp_path / "verl.parquet"
    done = runner.invoke(app, ["convert", str(path), "--out", str(converted)])
    assert done.exit_code == 0, done.output
    result = runner.invoke(app, ["inspect", str(converted), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unrecoverable"] == [f.as_dict() for f in verl_unrecoverable(v1_keys=False, has_uid=False)]
