"""The format detection and the options a format cannot honour reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dumps import VERL_ROWS, cli_error, trl_table, write_jsonl

from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts


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


def test_reader_errors_are_aggscope_errors_in_the_library(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "5.jsonl", VERL_ROWS)
    with pytest.raises(AggscopeError, match="unknown format"):
        open_rollouts(str(path), format="openrlhf")


def test_a_folder_mixing_two_trainers_dumps_is_refused_up_front(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a_atropos.jsonl", [{"tokens": [[1]], "masks": [[1]], "scores": [1.0]}])
    write_jsonl(tmp_path / "b_verl" / "5.jsonl", VERL_ROWS)
    assert cli_error("weights", str(tmp_path)).endswith(
        f"{tmp_path}: mixes dumps of atropos (a_atropos.jsonl) and verl (5.jsonl); give one file or a glob of one kind"
    )
