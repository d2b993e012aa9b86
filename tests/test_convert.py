"""``aggscope convert``: canonical Parquet that reads back to identical numbers, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_readers import VERL_ROWS, cli_error, write_jsonl
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.loading import text_uid

runner = CliRunner()
LAYOUT = ["--mini-batch-size", "4", "--micro-batch-size", "2", "--dp-size", "2", "--max-seq-len", "16"]


def invoke(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def weights_json(path: Path, *extra: str) -> dict:
    return invoke("weights", str(path), *LAYOUT, *extra, "--json")


def test_convert_verl_then_weights_gives_identical_numbers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dump" / "5.jsonl", VERL_ROWS)
    write_jsonl(tmp_path / "dump" / "6.jsonl", [dict(r, step=6, score=1.0 - r["score"]) for r in VERL_ROWS])
    out = tmp_path / "verl.parquet"
    summary = invoke("convert", str(tmp_path / "dump"), "-o", str(out), "--advantage", "rloo", "--json")
    assert summary["steps"] == 2 and summary["sequences"] == 12 and summary["lengths_estimated"] is True
    original = weights_json(tmp_path / "dump", "--advantage", "rloo")
    converted = weights_json(out)
    assert converted == original  # every number, per step and in total, and the lengths_estimated flag
    assert converted["lengths_estimated"] is True
    described = invoke("inspect", str(out), "--json")
    assert described["lengths_estimated"] is True and any("estimated from text" in n for n in described["notes"])
    text = invoke("inspect", str(out), "--uid", text_uid("Q2"), "--json")
    assert text["text"] == "Q2" and [o["rows"] for o in text["occurrences"]] == [[1, 3], [1, 3]]


def test_convert_atropos_and_canonical_parquet(tmp_path: Path, real_data: Path) -> None:
    source = real_data / "atropos_cybersec_objreward.jsonl"
    out = tmp_path / "atropos.parquet"
    invoke("convert", str(source), "-o", str(out), "--json")
    assert weights_json(out) == weights_json(source)
    again = tmp_path / "again.parquet"  # canonical Parquet (float32 advantages here) converts to itself
    invoke("convert", "-o", str(again), "--json")
    assert weights_json(again) == weights_json(Path(invoke("inspect", "--json")["source"]))


def test_convert_writes_whole_or_nothing(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dump" / "1.jsonl", VERL_ROWS)
    broken = write_jsonl(tmp_path / "dump" / "2.jsonl", VERL_ROWS[:2])
    broken.write_text(broken.read_text() + '{"input": "Q')
    out = tmp_path / "out.parquet"
    assert "2.jsonl: line 3: not valid JSON" in cli_error("convert", str(tmp_path / "dump"), "-o", str(out))
    assert list(tmp_path.iterdir()) == [tmp_path / "dump"]  # no output, no temporary file left


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-o", "out.txt"], "out.txt: the output file must end in .parquet"),
        (["-o", "missing_dir/out.parquet"], "the directory missing_dir does not exist"),
        ([], "Missing option '--out'"),
    ],
)
def test_convert_errors(tmp_path: Path, args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in cli_error("convert", *args)
