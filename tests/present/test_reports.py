"""report and compare: the engine's numbers in report.json, a self-contained HTML page, Markdown beside
its figures, plain opening sentences, and a one-line error for every bad SPEC."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aggscope.analysis.weights import run_weights
from aggscope.cli import app
from aggscope.core.layout import Layout
from aggscope.core.modes import resolve_mode
from aggscope.core.weights import compute_weights
from aggscope.io.open import load_steps
from aggscope.present.figures import MODE_COLOURS
from aggscope.present.report import full_report, page
from aggscope.present.report.html import render_html, render_html_before_figures

runner = CliRunner()
LAYOUT_ARGS = ["--mini-batch-size", "100", "--micro-batch-size", "8", "--dp-size", "2", "--max-seq-len", "1024"]
LAYOUT = Layout(mini_batch_size=100, micro_batch_size=8, dp_size=2, max_seq_len=1024)
FIGURES = ["weight_distribution", "mass_vs_length", "prompt_concentration", "split_map", "zero_grad_causes", "steps"]
COMPARE_SPECS = ["prompt_mean,mini-batch-prompts=4,micro_batch_size=none", "seq-mean-token-mean,dp-size=1"]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("report")
    result = runner.invoke(app, ["report", *LAYOUT_ARGS, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result, out


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("compare")
    args = ["compare", *LAYOUT_ARGS, "--from", "token_mean"]
    for spec in COMPARE_SPECS:
        args += ["--to", spec]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result, out


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


# ---- report.json holds the engine's numbers ----------------------------------------------------
def test_report_numbers_are_the_engines(report_run: tuple[Any, Path]) -> None:
    _, out = report_run
    document = load(out)
    steps = load_steps()
    modes = [spec["mode"] for spec in document["specs"]]
    assert modes == [
        "token_mean",
        "token_mean_legacy",
        "token_sum",
        "sequence_mean",
        "seq_mean_token_sum",
        "seq_mean_token_sum_norm",
        "prompt_mean",
    ]
    engine = run_weights(steps, [resolve_mode(m) for m in modes], LAYOUT).to_dict()
    for mode in modes:
        result = document["results"][mode]
        assert result["total"] == engine["total"]["modes"][mode]
        assert [{k: v for k, v in s.items() if k != "step"} for s in result["steps"]] == [
            s["modes"][mode] for s in engine["steps"]
        ]
        assert [s["step"] for s in result["steps"]] == [0, 1, 2, 3]
    assert document["input"]["loss_tokens"] == engine["total"]["loss_tokens"]
    assert document["input"]["sequences"] == engine["total"]["sequences"] == 1024
    assert document["base"] == "token_mean"
    assert [spec["colour"] for spec in document["specs"]] == [MODE_COLOURS[m] for m in modes]


def test_compare_numbers_are_the_engines_at_each_specs_layout(compare_run: tuple[Any, Path]) -> None:
    _, out = compare_run
    document = load(out)
    steps = load_steps()
    expected_layouts = {
        "token_mean": LAYOUT,
        "prompt_mean,mini-batch-prompts=4,micro-batch-size=none": LAYOUT.replace(
            mini_batch_size=None, mini_batch_prompts=4, micro_batch_size=None
        ),
        "sequence_mean,dp-size=1": LAYOUT.replace(dp_size=1),
    }
    assert [spec["label"] for spec in document["specs"]] == list(expected_layouts)
    for spec in document["specs"]:
        layout = expected_layouts[spec["label"]]
        assert spec["layout"] == layout.to_dict()
        engine = run_weights(steps, [resolve_mode(spec["mode"])], layout).to_dict()
        assert document["results"][spec["label"]]["total"] == engine["total"]["modes"][spec["mode"]]


def quartile_shares_by_loop(mode: str, layout: Layout) -> tuple[list[float], list[float]]:
    """Length-quartile shares of gradient mass and of positive-advantage mass, row by row."""
    rows = []
    for batch in load_steps():
        weight = compute_weights(batch, mode, layout).row_weight.tolist()
        offsets = batch.offsets.tolist()
        advantages = batch.advantages.tolist()
        mask = batch.loss_mask.tolist()
        for i in range(batch.n_sequences):
            tokens = [advantages[t] for t in range(offsets[i], offsets[i + 1]) if mask[t]]
            rows.append((len(tokens), sum(abs(weight[i] * a) for a in tokens), sum(weight[i] * a for a in tokens if a > 0)))
    ranked = sorted(range(len(rows)), key=lambda j: rows[j][0])
    # Ties are never split: every row of one length goes to the quartile of that length's middle rank.
    ranks_of_length: dict[int, list[int]] = {}
    for rank, j in enumerate(ranked):
        ranks_of_length.setdefault(rows[j][0], []).append(rank)
    mass = [0.0] * 4
    for j in ranked:
        ranks = ranks_of_length[rows[j][0]]
        mass[(ranks[0] + ranks[-1]) // 2 * 4 // len(rows)] += rows[j][1]
    total = sum(mass)
    positive = sum(r[2] for r in rows)
    return [m / total for m in mass], [positive / total, 1 - positive / total]


def test_breakdown_numbers_match_a_plain_loop(compare_run: tuple[Any, Path]) -> None:
    _, out = compare_run
    document = load(out)
    for spec in document["specs"]:
        layout = Layout(**spec["layout"])
        shares, sign = quartile_shares_by_loop(spec["mode"], layout)
        result = document["results"][spec["label"]]
        assert result["length_quartiles"]["grad_mass_share"] == pytest.approx(shares, rel=1e-9)
        assert [result["advantage_sign"]["positive_share"], result["advantage_sign"]["negative_share"]] == pytest.approx(
            sign, rel=1e-9
        )
    change = document["changes"][0]
    base, candidate = (
        document["results"][label]["length_quartiles"]["grad_mass_share"] for label in ("token_mean", change["candidate"])
    )
    assert change["length_quartiles"]["change_points"] == pytest.approx(
        [100 * (c - b) for b, c in zip(base, candidate, strict=True)]
    )
    ess = change["ess_tokens"]
    assert ess["relative_change"] == pytest.approx(ess["candidate"] / ess["base"] - 1, rel=1e-12)


def test_prompt_moves_are_consistent(compare_run: tuple[Any, Path]) -> None:
    _, out = compare_run
    change = load(out)["changes"][0]
    gaining, losing = change["prompts_gaining"], change["prompts_losing"]
    assert len(gaining) == len(losing) == 5
    assert all(p["change_points"] > 0 for p in gaining) and all(p["change_points"] < 0 for p in losing)
    assert [p["change_points"] for p in gaining] == sorted((p["change_points"] for p in gaining), reverse=True)
    for entry in gaining + losing:
        assert entry["change_points"] == pytest.approx(100 * (entry["candidate_share"] - entry["base_share"]), rel=1e-9)
        assert entry["sequences"] == 8 and re.fullmatch(r"[0-9a-f]{8}", entry["uid"])
        assert entry["base_share"] > 0 or entry["candidate_share"] > 0  # a prompt with no gradient under both moves nothing


# ---- the opening sentences ---------------------------------------------------------------------
def test_report_opens_with_plain_sentences_and_their_numbers(report_run: tuple[Any, Path]) -> None:
    result, out = report_run
    document = load(out)
    summary = document["summary"]
    assert summary[0].endswith("4 steps, 1,024 responses to 128 prompts, 324,757 loss tokens.")
    base = document["results"]["token_mean"]["total"]
    no_gradient = base["zero_grad_tokens"] + base["nonfinite_grad_tokens"]
    assert f"({no_gradient:,}) get no gradient under token_mean" in summary[1]
    # The biggest length shift among the modes is sequence_mean's, with its numbers from the JSON.
    change = next(c for c in document["changes"] if c["candidate"] == "sequence_mean")
    before = change["length_quartiles"]["base_share"][3]
    after = change["length_quartiles"]["candidate_share"][3]
    sentence = next(s for s in summary if s.startswith("Moving from token_mean to sequence_mean"))
    rows = document["buckets"]["length_quartiles"]["sequences"]
    assert f"the longest {100 * rows[3] / sum(rows):.1f}% of responses" in sentence
    assert f"{100 * after:.1f}% of the gradient mass instead of {100 * before:.1f}%" in sentence
    printed = " ".join(result.stdout.split())
    for text in summary:
        assert " ".join(text.split()) in printed


def test_compare_summary_names_every_candidate(compare_run: tuple[Any, Path]) -> None:
    _, out = compare_run
    summary = load(out)["summary"]
    for label in ("prompt_mean,mini-batch-prompts=4,micro-batch-size=none", "sequence_mean,dp-size=1"):
        assert any(label in sentence for sentence in summary), label


# ---- the files ---------------------------------------------------------------------------------
class _References(HTMLParser):
    """Collects every attribute that can point somewhere, and the tags used."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in {"src", "href", "srcset", "action", "poster", "data", "background", "xlink:href"}:
                self.refs.append((tag, name, value or ""))
            if tag == "img" and name == "src":
                self.images.append(value or "")


@pytest.mark.parametrize("run", ["report_run", "compare_run"])
def test_html_references_nothing_outside_itself(run: str, request: pytest.FixtureRequest) -> None:
    _, out = request.getfixturevalue(run)
    page = (out / "report.html").read_text()
    parser = _References()
    parser.feed(page)
    assert not {"link", "iframe", "object", "embed", "base"} & set(parser.tags)
    # Two scripts, both inline: the page's own and the drill-down's JSON.
    assert parser.tags.count("script") == 2 and not re.search(r"<script[^>]*\ssrc=", page)
    for tag, name, value in parser.refs:
        assert value.startswith("#") or (tag == "img" and name == "src" and value.startswith("data:image/png;base64,")), (
            tag,
            name,
            value[:80],
        )
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"url\(|@import|https?:|//[a-z]", text, re.IGNORECASE)
    # One embedded, decodable PNG per figure, in figure order.
    assert len(parser.images) == len(FIGURES)
    for src in parser.images:
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    for figure in FIGURES:
        assert f'id="fig-{figure}"' in page


def test_markdown_sits_beside_its_figures(report_run: tuple[Any, Path]) -> None:
    _, out = report_run
    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == [f"{name}.png" for name in FIGURES]
    for name in linked:
        assert (out / name).stat().st_size > 20_000
    assert markdown.startswith("# aggscope report\n")
    document = load(out)
    assert document["figures"] == {name: f"{name}.png" for name in FIGURES}
    assert "| token_mean |" in markdown or "| token_mean" in markdown


def test_json_is_strict(report_run: tuple[Any, Path]) -> None:
    _, out = report_run
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    document = json.loads(text)

    def walk(value: Any) -> None:
        if isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    assert not list(out.glob(".*.tmp"))


class _Tables(HTMLParser):
    """The text of every table cell of a page, table by table, row by row; and the headings."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._skip = False  # inside the drill-down's table of prompts, which is the page's only

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and "data-web-only" in dict(attrs):
            self._skip = True
        elif self._skip:
            return
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            self._skip = tag != "table"
            return
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def markdown_text(text: str) -> str:
    """Escaped Markdown text as a renderer shows it: backslash escapes and HTML entities undone."""
    return html.unescape(re.sub(r"\\([\\\[\]|])", r"\1", text))


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Every table of a Markdown text, its separator line left out, cells unescaped."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("| "):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([markdown_text(cell) for cell in re.split(r" (?<!\\)\| ", line[2:-2])])
        previous = line
    return tables


@pytest.mark.parametrize("run", ["report_run", "compare_run", "faulty_compare"])
def test_html_and_markdown_draw_the_same_sections(run: str, request: pytest.FixtureRequest) -> None:
    """Both files render one list of sections: the same tables, cell for cell, under the same headings."""
    _, out = request.getfixturevalue(run)
    page = _Tables()
    page.feed((out / "report.html").read_text())
    markdown = (out / "report.md").read_text()
    assert markdown_tables(markdown) == page.tables
    headings = [markdown_text(line.lstrip("#").strip()) for line in markdown.splitlines() if line.startswith(("## ", "### "))]
    # The page groups the changes under one more heading, and has the same others in the same order.
    assert [h for h in page.headings if h not in {"Changes against the base", "Prompts"}] == headings
    assert len(page.tables) >= 6


@pytest.mark.parametrize("run", ["report_run", "compare_run"])
def test_the_terminal_shows_the_pages_at_a_glance_rows(run: str, request: pytest.FixtureRequest) -> None:
    result, out = request.getfixturevalue(run)
    glance = markdown_tables((out / "report.md").read_text())[1]  # after the table of SPECs
    header, rows = glance[0], glance[1:]
    shown = ["ESS tokens", "longest ¼ mass", "positive-A mass", "no gradient"]
    if run == "compare_run":
        shown.append("findings (E/W/I)")
    terminal = [line for line in result.stdout.splitlines() if line.startswith("│■")]
    assert len(terminal) == len(rows)
    for row, line in zip(rows, terminal, strict=True):
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        assert cells[0].removeprefix("■ ").replace(", ", ",") in row[0]  # a long label wraps onto the next line
        assert cells[1:] == [row[header.index(name)] for name in shown]


# ---- the terminal ------------------------------------------------------------------------------
def test_report_ends_by_saying_where_the_report_is(report_run: tuple[Any, Path]) -> None:
    result, out = report_run
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[-1] == f"report: {(out / 'report.html').resolve()}"
    assert all(len(line) <= 100 for line in lines[:-1]), max(lines, key=len)


def test_report_with_no_path_reads_the_bundled_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "-m", "token_mean", "-m", "grpo"])
    assert result.exit_code == 0, result.output
    document = load(tmp_path / "reports")
    assert document["input"]["source"].endswith("rollouts.parquet")
    assert [spec["label"] for spec in document["specs"]] == ["token_mean", "sequence_mean"]
    assert result.stdout.rstrip().splitlines()[-1] == f"report: {(tmp_path / 'reports' / 'report.html').resolve()}"


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("token_mena", "SPEC 'token_mena': unknown mode 'token_mena' (did you mean 'token_mean'?); valid modes: token_mean"),
        (
            "prompt_mean,mini_batch=4",
            "SPEC 'prompt_mean,mini_batch=4': unknown key 'mini-batch' (did you mean 'mini-batch-size'?); valid keys: mini-batch-size",
        ),
        ("prompt_mean,dp-size=x", "SPEC 'prompt_mean,dp-size=x': dp-size must be a whole number, got 'x'"),
        ("prompt_mean,order=sorted", "SPEC 'prompt_mean,order=sorted': layout: unknown order 'sorted'"),
        ("dapo", "SPEC 'dapo': the same mode and layout as 'token_mean'"),
    ],
)
def test_compare_rejects_a_bad_spec(tmp_path: Path, to: str, message: str) -> None:
    result = runner.invoke(app, ["compare", "--from", "token_mean", "--to", to, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aggscope: error: " + message), lines[0]
    assert not (tmp_path / "out").exists()


def test_compare_rejects_a_bad_base_and_missing_options(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["compare", "--from", "nope,dp-size=2", "--to", "token_mean", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and bad.stderr.startswith("aggscope: error: SPEC 'nope,dp-size=2': unknown mode 'nope'")
    for args in (["--from", "token_mean", "-o", str(tmp_path)], ["--to", "token_mean", "-o", str(tmp_path)]):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_compare_spec_that_cannot_run_on_the_data(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"advantages": [[1.0], [-1.0]], "loss_mask": [[1], [1]]}), tmp_path / "plain.parquet")
    result = runner.invoke(
        app,
        ["compare", str(tmp_path / "plain.parquet"), "--from", "token_mean", "--to", "prompt_mean", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("aggscope: error: SPEC 'prompt_mean': ")
    assert "unavailable without a uid column" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_report_output_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    result = runner.invoke(app, ["report", "-m", "token_mean", "-o", str(blocker)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"aggscope: error: {blocker}: exists and is not a directory; give a directory for the output"
    assert blocker.read_text() == "x"


# ---- check's findings and zero-gradient causes --------------------------------------------------
FAULTY = Path(__file__).resolve().parents[2] / "sample_data" / "faulty.parquet"


@pytest.fixture(scope="module")
def faulty_compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("faulty")
    args = ["compare", str(FAULTY), "--from", "token_mean", "--to", "prompt_mean,mini-batch-size=10", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result, out


def test_findings_are_checks_own_under_each_layout(faulty_compare: tuple[Any, Path]) -> None:
    from aggscope.analysis.checks import run_checks

    _, out = faulty_compare
    document = load(out)
    steps = load_steps(str(FAULTY))
    for spec in document["specs"]:
        expected = run_checks(steps, [spec["mode"]], Layout(**spec["layout"])).to_dict()
        checks = document["results"][spec["label"]]["checks"]
        assert checks["findings"] == expected["findings"]
        assert checks["counts"] == expected["counts"]
        assert checks["cut_prompts"] == expected["cut_prompts"]
        assert checks["modes"] == [spec["mode"]]
        assert document["results"][spec["label"]]["zero_grad"] == expected["zero_grad"][spec["mode"]]
    silent = [
        f
        for f in document["results"]["prompt_mean,mini-batch-size=10"]["checks"]["findings"]
        if f["code"] == "silent_zero_advantage"
    ]
    assert silent, "the faulty sample at 10 sequences per mini-batch cuts prompts"
    tokens = sum(f["tokens"] for f in silent)
    sentence = next(s for s in document["summary"] if "silent_zero_advantage" in s)
    assert f"would leave {tokens:,} loss tokens of {len(silent)} cut prompts with no gradient" in sentence


def test_zero_gradient_causes_add_up_to_the_engines_count(faulty_compare: tuple[Any, Path], report_run: tuple[Any, Path]) -> None:
    for _, out in (faulty_compare, report_run):
        document = load(out)
        for result in document["results"].values():
            total = result["total"]
            assert sum(result["zero_grad"].values()) == total["zero_grad_tokens"] + total["nonfinite_grad_tokens"]
    # On the faulty sample the causes are varied: all four data causes appear.
    causes = load(faulty_compare[1])["results"]["token_mean"]["zero_grad"]
    assert causes["zero_variance_group"] > 0 and causes["nonfinite_advantage"] > 0 and causes["zero_advantage"] > 0


def test_findings_are_in_the_html_and_markdown(faulty_compare: tuple[Any, Path]) -> None:
    _, out = faulty_compare
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for code in ("silent_zero_advantage", "nonfinite_advantage", "prompt_cut_by_mini_batch"):
        assert code in page and code in markdown
    assert "Why tokens get no gradient" in page and "zero variance group" in page


def test_compare_summary_fits_100_columns(compare_run: tuple[Any, Path], faulty_compare: tuple[Any, Path]) -> None:
    for result, _ in (compare_run, faulty_compare):
        lines = result.stdout.rstrip("\n").splitlines()
        assert lines[-1].startswith("report: ")
        assert all(len(line) <= 100 for line in lines[:-1]), max(lines[:-1], key=len)


def test_progress_shows_steps_and_tokens_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from aggscope.cli import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    items = list(progress.with_progress(iter([3, 4, 5]), 3, "report", tokens=lambda n: n * 1000))
    assert items == [3, 4, 5]
    err = capsys.readouterr().err
    assert "report" in err and "12,000 tokens" in err and "3/3" in err
    # Not a terminal, or a single step: no bar at all.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert list(progress.with_progress(iter([1, 2]), 2, "report", tokens=lambda n: n)) == [1, 2]
    assert capsys.readouterr().err == ""


def test_progress_moves_within_one_big_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A single step large enough gets a bar over tokens, advanced as its batches are decoded."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aggscope.cli import progress
    from aggscope.io import fastread
    from aggscope.io import parquet as loading
    from aggscope.io.open import open_rollouts

    lengths = [50] * 400
    table = pa.table({"advantages": [[1.0] * n for n in lengths], "loss_mask": [[1] * n for n in lengths]})
    pq.write_table(table, tmp_path / "one.parquet")
    rollouts = open_rollouts(str(tmp_path / "one.parquet"))
    assert rollouts.step_tokens(0) == sum(lengths)
    monkeypatch.setattr(loading, "READ_BATCH_TOKENS", 2_000)  # 10 batches
    monkeypatch.setattr(progress, "PROGRESS_MIN_TOKENS", 10_000)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    seen: list[int] = []
    with fastread.reading_progress(seen.append):
        (batch,) = list(progress.with_progress(rollouts.iter_steps(), 1, "weights", rollouts=rollouts))
    assert batch.n_tokens == sum(seen) == 20_000 and len(seen) == 10
    err = capsys.readouterr().err
    assert "weights" in err and "1/1 steps" in err and "20,000 tokens" in err
    # A consumer that stops after the first step leaves no listener behind.
    bar = progress.with_progress(rollouts.iter_steps(), 1, "weights", rollouts=rollouts)
    next(bar)
    assert fastread._read_listeners == []
    bar.close()
    capsys.readouterr()
    # Below the threshold a one-step input shows no bar.
    monkeypatch.setattr(progress, "PROGRESS_MIN_TOKENS", 1 << 30)
    assert len(list(progress.with_progress(rollouts.iter_steps(), 1, "weights", rollouts=rollouts))) == 1
    assert capsys.readouterr().err == ""


def test_report_and_compare_when_no_token_gets_a_gradient(tmp_path: Path) -> None:
    """Every group zero-variance (all advantages 0): shares are undefined, shown as '–', never a crash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "uid": ["a", "a", "b", "b"],
            "advantages": [[0.0] * 3, [0.0] * 5, [0.0] * 2, [0.0] * 4],
            "loss_mask": [[1] * 3, [1] * 5, [1] * 2, [1] * 4],
            "reward": [1.0, 1.0, 0.0, 0.0],
        }
    )
    pq.write_table(table, tmp_path / "flat.parquet")
    for args in (["report"], ["compare", "--from", "token_mean", "--to", "sequence_mean"]):
        out = tmp_path / args[0]
        result = runner.invoke(app, [args[0], str(tmp_path / "flat.parquet"), *args[1:], "-o", str(out)])
        assert result.exit_code == 0, result.output
        document = json.loads((out / "report.json").read_text())
        assert document["results"]["token_mean"]["total"]["zero_grad_tokens"] == 14
        assert document["changes"][0]["length_quartiles"]["change_points"] == [None] * 4
        assert "100.0% of loss tokens (14) get no gradient" in " ".join(document["summary"])


# ---- the library -------------------------------------------------------------------------------
def test_library_report_takes_an_engine_and_a_progress(report_run: tuple[Any, Path], tmp_path: Path) -> None:
    """``full_report`` is what ``aggscope report`` runs: the same report.json, the steps' results shown as they come."""
    import aggscope
    from aggscope.analysis.runner import open_engine

    _, out = report_run
    document = load(out)
    rollouts = aggscope.open_rollouts(None)
    seen: list[int] = []

    def progress(results: Any) -> Any:
        for part in results:
            seen.append(part.step)
            yield part

    modes = [spec["mode"] for spec in document["specs"]]
    report = aggscope.full_report(rollouts, modes, LAYOUT, engine=open_engine("local"), progress=progress)
    assert seen == [0, 1, 2, 3]
    assert report.document == document
    assert report.summary == document["summary"]
    files = report.write(tmp_path)
    assert files.json.read_bytes() == (out / "report.json").read_bytes()
    # Steps in memory, compared: the source is given, as before.
    specs = [aggscope.parse_spec(text, LAYOUT) for text in ("token_mean", "sequence_mean")]
    compared = aggscope.compare(rollouts.iter_steps(), specs, source="mine")
    assert compared.document["input"]["source"] == "mine" and compared.document["input"]["notes"] == []
    for key in ("total", "steps", "length_quartiles", "advantage_sign", "prompt_concentration", "zero_grad"):
        assert compared.document["results"]["sequence_mean"][key] == document["results"]["sequence_mean"][key], key


def test_the_page_rendered_before_its_figures_is_the_page_rendered_with_them(tmp_path: Path) -> None:
    """``report.html`` is rendered while the figures are drawn, with a slot for each: filled, it is
    the text ``render_html`` gives with the figures at hand, byte for byte."""
    report = full_report(load_steps(), ["token_mean", "prompt_mean"], LAYOUT)
    drawn = page(report.data)
    images = {name: f"the png of {name}".encode() * 40 for name in report.data.figures}  # any bytes
    fill = render_html_before_figures(drawn)
    assert fill(images) == render_html(drawn, images)
    assert "aggscope-figure-" not in fill(images)
    files = report.write(tmp_path / "out")
    written = {name: path.read_bytes() for name, path in files.figures.items()}
    assert files.html.read_text() == render_html(drawn, written)
