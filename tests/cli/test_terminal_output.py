"""The terminal: tables that fit 80 and 100 columns whole, one line per step, help, suggestions, outputs."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
from conftest import REPO, SAMPLE_DATA
from rich.cells import cell_len
from test_cli import assert_error
from typer.testing import CliRunner

from aggscope import fmt
from aggscope.cli import app
from aggscope.core.modes import MODES
from aggscope.errors import did_you_mean

runner = CliRunner()
FAULTY = str(SAMPLE_DATA / "faulty.parquet")
EVERY_MODE = [arg for name in MODES for arg in ("-m", name)]
WIDTHS = ("80", "100")


def run(*args: str, columns: str | None = None) -> object:
    return runner.invoke(app, list(args), env={"COLUMNS": columns} if columns else None)


def assert_fits(result: object, width: str) -> str:
    """The output (exit 0) with no line wider than ``width`` and no cell cut short (rich's ``…``)."""
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    too_wide = [line for line in lines if cell_len(line) > int(width)]
    assert not too_wide, too_wide
    # aggscope's own row-range abbreviation ("rows 0-7, 24-31, … (80 rows)") says what it leaves out
    cut = [
        line for line in lines if "…" in re.sub(r"…( more)? \(\d[\d,]* rows\)", "", line) and not line.lstrip().startswith("…")
    ]
    assert not cut, cut
    return result.stdout


def assert_whole(text: str, *words: str) -> None:
    """Each word appears whole: not broken over two lines, not a prefix of a cut name."""
    for word in words:
        # not inside a longer name or number (a comma between words is punctuation, in 1,024 it is not)
        assert re.search(rf"(?<![\w.])(?<!\d,){re.escape(word)}(?![\w.]|,\d)", text), word


@pytest.mark.parametrize("width", WIDTHS)
def test_weights_every_mode_fits_with_every_number(width: str) -> None:
    args = ["weights", "--max-seq-len", "1024", *EVERY_MODE]
    document = json.loads(run(*args, "--json").stdout)
    text = assert_fits(run(*args, columns=width), width)
    assert_whole(text, *MODES)
    for summary in document["total"]["modes"].values():
        assert_whole(text, fmt.number(summary["weight_sum"]), fmt.number(summary["grad_abs_sum"]))
        assert_whole(text, fmt.number(summary["zero_grad_tokens"]), fmt.number(round(summary["ess_tokens"])))


def test_weights_keeps_full_titles_where_they_fit() -> None:
    text = assert_fits(run("weights", columns="100"), "100")
    assert "ESS tokens" in text and "long/short" in text and "non-finite" in text
    sample_at_80 = assert_fits(run("weights", columns="80"), "80")  # the sample's 6 modes: short titles, one table each
    assert_whole(sample_at_80, "seq_mean_token_sum", "324,757", "118,001")
    assert sample_at_80.count("┃mode ") == 5
    narrow = assert_fits(run("weights", "--max-seq-len", "1024", *EVERY_MODE, columns="80"), "80")
    # 9 modes and a 30-character name: each step's table fits 80 columns with short titles wrapped;
    # the total's wider numbers do not, so it is stacked in 2 parts that each repeat the mode column.
    assert narrow.count("seq_mean_token_sum_norm_padded") == 4 + 2
    assert "ESS tokens" not in narrow and "NaN/inf" in narrow


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "args",
    [
        ["check"],  # the bundled sample, its default modes
        ["check", FAULTY, "--mini-batch-size", "10", "--max-seq-len", "256", *EVERY_MODE, "--fail-on", "never"],
    ],
)
def test_check_fits(width: str, args: list[str]) -> None:
    document = json.loads(run(*args, "--json").stdout)
    text = assert_fits(run(*args, columns=width), width)
    assert_whole(text, *document["modes"], fmt.number(document["loss_tokens"]))
    for causes in document["zero_grad"].values():
        assert_whole(text, *(fmt.number(count) for count in causes.values()))


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_fits_with_every_count(width: str) -> None:
    document = json.loads(run("inspect", "--json").stdout)
    text = assert_fits(run("inspect", columns=width), width)
    for step in document["steps"]:
        assert_whole(text, fmt.number(step["loss_tokens"]), fmt.number(step["tokens"]), "8×32")


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_long_spec_labels_fit(width: str, tmp_path: Path) -> None:
    long_spec = "seq_mean_token_sum_norm_padded,mini-batch-prompts=16,micro-batch-size=4,order=shuffle"
    args = ["compare", "--mini-batch-size", "64", "--from", "token_mean", "--to", long_spec, "-o", str(tmp_path)]
    text = assert_fits(run(*args, columns=width), width)
    # the label wraps only after its commas: every piece of it is whole
    assert_whole(text, "seq_mean_token_sum_norm_padded", "mini-batch-prompts=16", "micro-batch-size=4", "order=shuffle")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "compare"


def test_wrap_words_breaks_a_long_label_only_after_commas() -> None:
    from aggscope.cli.render import wrap_words

    text = "Under prompt_mean,mini-batch-prompts=16,micro-batch-size=4, tokens get 40.7% of the mass."
    lines = wrap_words(text, 30).splitlines()
    assert lines == ["Under prompt_mean,", "mini-batch-prompts=16,", "micro-batch-size=4, tokens get", "40.7% of the mass."]
    assert wrap_words("short words only", 80) == "short words only"


# ---- one line per step, the worst first ---------------------------------------------------------
@pytest.fixture(scope="module")
def many_steps(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("many")
    assert run("sample", str(folder), "--steps", "12", "--prompts", "4", "--group-size", "4").exit_code == 0
    return str(folder / "rollouts.parquet")


def step_column(text: str) -> list[int]:
    """The step numbers of the per-step table, in the order printed."""
    start = text.index("12 steps, worst first")
    end = text.index("all 12 steps") if "all 12 steps" in text else text.index("loss tokens without gradient")
    return [int(m[1]) for m in re.finditer(r"^[│ ]?\s*(\d+) [│ ]", text[start:end], re.M)]


def test_weights_many_steps_one_line_per_step_worst_first(many_steps: str) -> None:
    document = json.loads(run("weights", many_steps, "--json").stdout)

    def share(step: dict) -> float:
        worst = max(m["zero_grad_tokens"] + m["nonfinite_grad_tokens"] for m in step["modes"].values())
        return worst / step["loss_tokens"]

    expected = sorted(document["steps"], key=lambda s: (-share(s), s["step"]))  # no step has non-finite gradients
    for width in WIDTHS:
        text = assert_fits(run("weights", many_steps, columns=width), width)
        assert step_column(text) == [s["step"] for s in expected[:8]]
        assert "… 4 more steps (--all-steps lists every step" in text
        assert "step 0 ·" not in text  # no per-step mode tables
    every = run("weights", many_steps, "--all-steps").stdout
    assert step_column(every) == [s["step"] for s in expected] and "more steps" not in every


def test_check_many_steps_one_line_per_step_worst_first(many_steps: str) -> None:
    args = ["check", many_steps, "--mini-batch-size", "6", "--fail-on", "never"]
    document = json.loads(run(*args, "--json").stdout)
    severities = {step["step"]: [0, 0, 0] for step in document["steps"]}
    for finding in document["findings"]:
        if finding["step"] is None:  # a finding on the whole run is in no step's line
            continue
        severities[finding["step"]][("error", "warning", "info").index(finding["severity"])] += 1

    def badness(step: dict) -> tuple:
        no_grad = max(sum(causes.values()) for causes in step["zero_grad"].values())
        return (*(-count for count in severities[step["step"]]), -no_grad / step["loss_tokens"], step["step"])

    expected = [step["step"] for step in sorted(document["steps"], key=badness)]
    text = assert_fits(run(*args, columns="80"), "80")
    assert step_column(text) == expected[:8] and "… 4 more steps" in text
    assert step_column(run(*args, "--all-steps").stdout) == expected


def test_one_step_gets_no_step_lines_and_counts_read_one_way(real_data: Path, tmp_path: Path) -> None:
    dump = str(real_data / "verl_rollout_data_dir_step2.jsonl")
    checked = run("check", dump, "--fail-on", "never").stdout
    assert "worst first" not in checked
    assert " · 1 step · 1,024 sequences · 297,510" in checked  # tool spans counted as not trained
    assert "all 1 step · 1,024 sequences · 64 prompts · 297,510 loss tokens" in run("weights", dump, "-m", "token_mean").stdout
    converted = run("convert", dump, "-o", str(tmp_path / "c.parquet")).stdout
    assert ": 1 step, 1,024 sequences, 340,259 tokens (297,510 loss tokens)" in " ".join(converted.split())
    assert fmt.plural(1024, "warning") == "1,024 warnings" and fmt.plural(1, "step") == "1 step"


# ---- help, suggestions, defaults --------------------------------------------------------------------
def test_bare_aggscope_prints_help_and_exits_0() -> None:
    done = subprocess.run(["aggscope"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Usage: aggscope" in done.stdout and "weights" in done.stdout
    assert done.stderr == ""


def test_help_shows_plain_metavars_and_sample_defaults() -> None:
    for name in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        text = run(name, "--help", columns="100").stdout
        assert not re.search(r"<\w[\w ]*>|RANGE|INTEGER|TEXT\b", text), (name, text)
    sample = " ".join(run("sample", "--help", columns="100").stdout.split())
    for default in ("[default: 4; 3 with --faults]", "[default: 32; 8 with --faults]", "[default: 1024; 256 with --faults]"):
        assert default in sample
    assert "{DIR}" in sample and "--steps N Training steps" in sample and "[x>=1]" in sample
    weights = run("weights", "--help", columns="100").stdout
    for metavar in ("PATH", "MODE", "FILE", "ROLE=NAME", "KEY=VALUE"):
        assert metavar in weights


@pytest.mark.parametrize("columns", ["60", "80", "100"])
def test_help_never_cuts_an_option_name_at_its_hyphens(columns: str) -> None:
    """Click's wrapping breaks at hyphens (``--mini-`` / ``batch-size``); the help wraps at spaces only,
    and every option of a command, named in its help or its example, appears whole on one line."""
    for name in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        text = run(name, "--help", columns=columns).stdout
        assert not re.search(r"[A-Za-z]-$", text, re.M), (name, columns, text)
        joined = " ".join(text.split())
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", joined))
        lines = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text))
        assert named == lines, (name, columns, named ^ lines)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["weights", "-m", "tokn_mean"], "unknown mode 'tokn_mean' (did you mean 'token_mean'?); valid modes:"),
        (["weights", "-m", "seq-mean-token-men"], "(did you mean 'seq_mean_token_mean'?)"),
        (["weights", "--order", "groupd"], "unknown order 'groupd' (did you mean 'grouped'?); valid orders"),
        (["weights", "--composition", "rank_first"], "(did you mean 'ranks_first'?); valid compositions"),
        (["weights", "--trainer", "verll"], "--trainer 'verll': unknown trainer (did you mean 'verl'?); choose one of"),
        (["weights", "--trainer", "nemorll"], "(did you mean 'nemo-rl'?)"),
        (["weights", "--format", "atropus"], "unknown format (did you mean 'atropos'?)"),
        (["weights", "--advantage", "rlooo"], "unknown estimator (did you mean 'rloo'?)"),
        (["check", "--fail-on", "warnin"], "--fail-on 'warnin' (did you mean 'warning'?): expected one of"),
        (["weights", "--col", "uidd=x"], "unknown role 'uidd' (did you mean 'uid'?)"),
        (["weights", "--engine", "rai"], "unknown engine 'rai' (did you mean 'ray'?)"),
        (["plot", "--figure", "split-map"], "unknown figure 'split-map' (did you mean 'split_map'?)"),
        (["plot", "--image-format", "sgv"], "(did you mean 'svg'?)"),
        (["compare", "--from", "token_mean", "--to", "prompt_mean,dp-szie=2"], "unknown key 'dp-szie' (did you mean 'dp-size'?)"),
        (["compare", "--from", "tokenmean", "--to", "prompt_mean"], "unknown mode 'tokenmean' (did you mean 'token_mean'?)"),
        (["weights", "-m", "mean_of_means"], "unknown mode 'mean_of_means'; valid modes: token_mean,"),  # nothing close
    ],
)
def test_a_typo_gets_a_suggestion(args: list[str], expected: str, tmp_path: Path) -> None:
    assert_error(run(*args, *(["-o", str(tmp_path / "o")] if args[0] in ("plot", "compare") else [])), expected)


def test_did_you_mean() -> None:
    assert did_you_mean("Token-Mean ", ["token_mean", "token_sum"]) == " (did you mean 'token_mean'?)"
    assert did_you_mean("primerl", {"prime-rl": "prime-rl", "nemo-rl": "nemo-rl"}) == " (did you mean 'prime-rl'?)"
    assert did_you_mean("zzz", ["token_mean"]) == ""


# ---- default outputs, and what the README's commands leave behind -----------------------------------
def test_compare_and_plot_default_to_a_folder_named_after_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("compare", "--from", "token_mean", "--to", "sequence_mean").exit_code == 0
    assert (tmp_path / "compare" / "report.html").is_file()
    assert run("plot", "-m", "token_mean", "--figure", "steps").exit_code == 0
    assert (tmp_path / "plots" / "steps.png").is_file()


DEFAULT_OUT = {"report": "reports", "compare": "compare", "plot": "plots"}


def readme_outputs() -> list[str]:
    """Every path a ``$ aggscope ...`` example of the README writes inside the checkout."""
    paths = []
    lines = (REPO / "README.md").read_text().splitlines()
    for line, shown in zip(lines, [*lines[1:], ""], strict=True):
        if not line.startswith("$ aggscope ") or shown.startswith("aggscope: error: "):
            continue  # an example of an error writes nothing
        words = shlex.split(line[2:].split(" | ")[0])
        command = words[1]
        outs = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-o", "--out")]
        if command == "sample":
            outs.append(words[2])
        if not outs and command in DEFAULT_OUT:
            outs.append(DEFAULT_OUT[command])
        paths += [out for out in outs if not out.startswith(("/", "..", "s3:"))]
    return paths


def test_every_output_of_the_readme_examples_is_ignored_by_git() -> None:
    paths = readme_outputs()
    assert {"reports", "compare", "figures"} <= set(paths), paths
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in [*paths, *DEFAULT_OUT.values()]:
        # a folder's pattern (/reports/) matches what is inside it whether or not it exists yet
        ignored = [subprocess.run(["git", "check-ignore", "-q", p], cwd=REPO).returncode == 0 for p in (path, f"{path}/x")]
        assert any(ignored), f"{path} is written by a README example but not in .gitignore"


@pytest.mark.parametrize("width", [80, 100, 120])
def test_fit_table_never_cuts_a_cell(width: int) -> None:
    """A table far wider than the console: shortened, opened, then stacked, each cell whole."""
    from rich.console import Console

    from aggscope.cli.render import Column, Row, fit_table

    columns = [Column("mode", justify="left")] + [Column(f"a long column title {i}", f"c{i}") for i in range(9)]
    names = ["seq_mean_token_sum_norm_padded", "token_mean"]
    rows = [Row((name, *(fmt.number(123_456_789 + 1_000 * i + j) for i in range(9)))) for j, name in enumerate(names)]
    console = Console(width=width, record=True, file=io.StringIO())
    tables = fit_table(console, columns, rows, "title")
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert max(cell_len(line) for line in text.splitlines()) <= width
    assert len(tables) > 1 and all(text.count(name) == len(tables) for name in names)  # the mode column repeats
    assert_whole(text, *(cell for row in rows for cell in row.cells[1:]))
