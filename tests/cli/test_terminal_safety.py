"""Data reaches the terminal and the report escaped; every integer option is bounded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aggscope.analysis.specs import parse_spec
from aggscope.cli import app
from aggscope.core.layout import MAX_SIZE, Layout
from aggscope.errors import AggscopeError

runner = CliRunner()
HOSTILE_UIDS = [
    "\x1b]0;TITLE\x07",
    "\x1b[2J[/bold]",
    "[red]r",
    "\u202eabc",
    "<img src=x onerror=alert(1)>",
    "![i](http://x/i.png)",
]


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    uids = [u for u in HOSTILE_UIDS for _ in range(2)]
    table = pa.table({"uid": uids, "advantages": [[1.0, -1.0]] * len(uids), "loss_mask": [[1, 1]] * len(uids)})
    pq.write_table(table, tmp_path / "hostile.parquet")
    return tmp_path / "hostile.parquet"


def test_uids_in_findings_reach_the_terminal_escaped(hostile: Path) -> None:
    result = runner.invoke(app, ["check", str(hostile), "--mini-batch-size", "3", "--verbose"])
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "prompt \\x1b[2J[/bold] ·" in result.stdout  # written out, the markup left as text


@pytest.mark.parametrize(
    ("uid", "shown"), [("\x1b[2J[/bold]", "\\x1b[2J[/bold]"), ("[red]r", "[red]r"), ("\u202eabc", "\\u202eabc")]
)
def test_inspect_uid_shows_it_escaped(uid: str, shown: str, hostile: Path) -> None:
    result = runner.invoke(app, ["inspect", str(hostile), "--uid", uid])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"uid {shown}: 2 rows in 1 step\n")


def test_an_error_line_escapes_the_data_it_quotes(hostile: Path) -> None:
    result = runner.invoke(app, ["inspect", str(hostile), "--uid", "\x1b]0;x\x07"])
    assert result.exit_code == 2 and "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_report_md_escapes_html_and_links_as_report_html_does(hostile: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(hostile), "--mini-batch-size", "3", "-o", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<img src=x" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "![i](http" not in markdown and "!\\[i\\](http://x/i.png)" in markdown
    assert "<img src=x" not in page


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"micro_batch_size": 2**63}, f"--micro-batch-size must be at most {MAX_SIZE:,}, got 9223372036854775808"),
        ({"mini_batch_size": 2**64}, "--mini-batch-size must be at most"),
        ({"dp_size": MAX_SIZE + 1}, "--dp-size must be at most"),
        ({"max_seq_len": 10**20}, "--max-seq-len must be at most"),
        ({"mini_batch_prompts": 2**31}, "--mini-batch-prompts must be at most"),
        ({"seed": 2**63}, "--seed must be a whole number from 0 to 9,223,372,036,854,775,807"),
        ({"mini_batch_size": True}, "--mini-batch-size must be a whole number of at least 1"),
    ],
)
def test_every_layout_number_is_bounded_in_the_library(changes: dict, message: str) -> None:
    with pytest.raises(AggscopeError, match=message):
        Layout(**changes)


def test_the_largest_sizes_still_work() -> None:
    layout = Layout(mini_batch_size=MAX_SIZE, micro_batch_size=MAX_SIZE, dp_size=MAX_SIZE, max_seq_len=MAX_SIZE, seed=2**63 - 1)
    assert layout.dp_size == MAX_SIZE


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("prompt_mean,micro-batch-size=9223372036854775808", "SPEC 'prompt_mean,micro-batch-size=9223372036854775808': layout:"),
        ("prompt_mean,dp-size=1e20", "dp-size must be a whole number, got '1e20'"),
        ("prompt_mean,seed=" + "9" * 300, "characters long"),
    ],
)
def test_spec_numbers_are_bounded(spec: str, message: str) -> None:
    with pytest.raises(AggscopeError, match=message):
        parse_spec(spec, Layout())


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 5000])
def test_layout_options_at_huge_values_are_one_line(value: str) -> None:
    result = runner.invoke(app, ["weights", "--micro-batch-size", value])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "--micro-batch-size" in result.stderr
