"""The report as one list of sections, which the HTML and the Markdown renderers both walk.

``page(document)`` gives a ``Page``: the title, the opening (who made it, the summary sentences, the
reader's notes on the input) and the ``Section`` list, each a heading and its blocks (paragraphs,
lines, tables, figures). A renderer only decides how each kind of block looks; what is said, and in
which order, is decided here once.

Two things the Markdown has always left out are marked rather than dropped: ``web_only`` paragraphs
(explanations under a table) and the page's "Changes against the base" heading, whose sections are
top-level in the Markdown (``markdown_level``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aggscope import fmt
from aggscope.analysis.breakdown.model import MIN_ROWS_PER_BUCKET
from aggscope.analysis.breakdown.outcomes import REPORT_FINDINGS_PER_CODE
from aggscope.present.report.document import ReportDocument
from aggscope.present.report.sentences import token_span
from aggscope.present.report.tables import (
    STEP_ROWS,
    Table,
    change_tables,
    difficulty_table,
    findings_tables,
    glance_rows,
    glance_table,
    length_table,
    specs_table,
    steps_table,
    zero_grad_table,
)

FIGURE_CAPTIONS = {
    "weight_distribution": "Per-token gradient weight |w·A| of every mode, relative to that mode's average token, "
    "for positive and negative advantages. A narrow ridge means tokens are treated alike; a wide one means some "
    "tokens get many times the gradient of others.",
    "mass_vs_length": "Share of gradient mass per response-length decile. The dashed line is each decile's share "
    "of loss tokens: a mode above it favours those responses, below it neglects them.",
    "prompt_concentration": "Prompts ranked by the gradient mass they get. The further a curve bows above the "
    "diagonal, the fewer prompts carry the update.",
    "split_map": "How the trainer cuts a step into mini-batches, rank shards and micro-batches. Prompt groups "
    "cut by a boundary are coloured by the coarsest boundary that cuts them.",
    "zero_grad_causes": "Loss tokens whose gradient weight is zero or not finite, by cause.",
    "steps": "For each training step: the share of loss tokens with no gradient, the share of gradient mass on that "
    "step's longest quarter of responses, and the effective number of tokens.",
}
FIGURE_TITLES = {
    "weight_distribution": "Per-token gradient weight",
    "mass_vs_length": "Gradient mass by response length",
    "prompt_concentration": "Concentration across prompts",
    "split_map": "How a step is split",
    "zero_grad_causes": "Tokens with no gradient",
    "steps": "Per-step trends",
}
GLANCE_NOTE = (
    "Σ weight and Σ |w·A|: sums over all loss tokens of all steps. ESS tokens: effective number of tokens (Σw)²/Σw². "
    "long/short: mean per-token weight of the longest quarter of responses over the shortest quarter's. longest ¼ "
    "mass: share of the gradient mass on the longest quarter of responses."
)
DIFFICULTY_NOTE = (
    "A prompt's difficulty is its group mean reward placed in the range of all rewards: hard in the lowest third, "
    "easy in the top third (for 0/1 rewards: the group's success rate)."
)


@dataclass(frozen=True)
class Code:
    """Text set as code (a command, a file name)."""

    text: str


@dataclass(frozen=True)
class Paragraph:
    """A paragraph.

    Attributes:
        spans: its text, pieces of it possibly code.
        style: ``note`` (small and muted on the page) or ``meta`` (the line under the title).
        web_only: an explanation the page shows and the Markdown leaves out.
    """

    spans: tuple[str | Code, ...]
    style: str = "note"
    web_only: bool = False


@dataclass(frozen=True)
class Lines:
    """Short notes that belong together, one per line (the reader's remarks, check's notes)."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    """The opening sentences."""

    sentences: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    table: Table


@dataclass(frozen=True)
class FigureBlock:
    """A figure: ``file`` is its image beside the report, which the page embeds instead."""

    name: str
    title: str
    caption: str
    file: str


@dataclass(frozen=True)
class Group:
    """Blocks under one summary line that the page collapses (``<details>``) and the Markdown shows under a bold line."""

    summary: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Chart:
    """A bar chart the page draws as inline SVG, every bar with its value on hover; the Markdown leaves it
    out (the table beside it has the numbers).

    Attributes:
        categories: one label per group of bars.
        series: (SPEC label, colour, one percentage per category or None) per SPEC.
        key: where in report.json the values are (``results.LABEL.KEY.grad_mass_share``).
    """

    title: str
    categories: tuple[str, ...]
    series: tuple[tuple[str, str, tuple[float | None, ...]], ...]
    key: str


@dataclass(frozen=True)
class Explorer:
    """The per-prompt drill-down (page only): a sortable table of prompts, a search box, and each prompt's rows."""

    table: Table
    note: str
    labels: tuple[str, ...] = ()
    prompts: tuple[dict[str, Any], ...] = field(default=(), repr=False)


Block = Paragraph | Lines | Summary | TableBlock | FigureBlock | Group | Chart | Explorer


@dataclass(frozen=True)
class Section:
    """A heading and what follows it up to the next heading.

    Attributes:
        level: heading level (2 for the page's parts, 3 within them).
        anchor: the heading's id on the page, which the page's navigation links to (None: not linked).
        nav: its text in the navigation (None: the title).
        web_only: the heading is the page's only (its blocks, if any, are too).
        markdown_level: the heading's level in the Markdown where it differs from ``level``.
    """

    title: str
    level: int
    blocks: tuple[Block, ...] = ()
    anchor: str | None = None
    nav: str | None = None
    web_only: bool = False
    markdown_level: int | None = None


@dataclass(frozen=True)
class Page:
    """A report as the renderers draw it: title, opening blocks, sections, and the aggscope that made it."""

    title: str
    version: str
    opening: tuple[Block, ...]
    sections: list[Section]


def note(*spans: str | Code, web_only: bool = False) -> Paragraph:
    return Paragraph(spans, "note", web_only)


def page(document: ReportDocument) -> Page:
    """The report of ``document`` as a title, an opening and its sections, in order."""
    source = document.input
    opening: list[Block] = [
        Paragraph((f"{source.source} · aggscope {document.version}",), style="meta"),
        Summary(document.summary),
    ]
    if source.notes:
        opening.append(Lines(tuple(f"input: {text}" for text in source.notes)))
    return Page(document.title, document.version, tuple(opening), sections(document))


def sections(document: ReportDocument) -> list[Section]:
    """Every section of the report, in the order both renderers draw them."""
    glance: tuple[Block, ...] = (
        TableBlock(specs_table(document)),
        TableBlock(glance_table(glance_rows(document))),
        note(GLANCE_NOTE, web_only=True),
    )
    if document.comparison.coincide:
        glance += (note(COINCIDE_NOTE, web_only=True),)
    length = document.comparison.length_quartiles
    length_blocks: tuple[Block, ...] = (TableBlock(length_table(document)), _chart(document, "length_quartiles"))
    if len(length.nonempty) < len(length.names):
        length_blocks += (note(_fewer_buckets_note(len(length.nonempty), len(length.names))),)
    out = [
        Section("At a glance", 2, glance, anchor="glance"),
        Section("Gradient mass by response length", 3, length_blocks),
    ]
    difficulty = difficulty_table(document)
    if difficulty is not None:
        blocks = (TableBlock(difficulty), _chart(document, "difficulty"), note(DIFFICULTY_NOTE, web_only=True))
        out.append(Section("Gradient mass by prompt difficulty", 3, blocks))
    figures = tuple(
        FigureBlock(name, FIGURE_TITLES.get(name, name), FIGURE_CAPTIONS.get(name, ""), file)
        for name, file in (document.figures or {}).items()
    )
    out.append(Section("Figures", 2, figures, anchor="figures"))
    out += _change_sections(document)
    out += _findings_sections(document)
    out += _unrecoverable_sections(document)
    explorer = explorer_block(document)
    if explorer is not None:
        out.append(Section("Prompts", 2, (explorer,), anchor="prompts", web_only=True))
    steps: tuple[Block, ...] = (TableBlock(steps_table(document)),)
    if len(document.input.steps) > STEP_ROWS:
        steps += (note(f"First {STEP_ROWS} of {len(document.input.steps)} steps; report.json has them all.", web_only=True),)
    out.append(Section("Steps", 2, steps, anchor="steps"))
    return out


COINCIDE_NOTE = (
    "A = B: the modes coincide under this layout (their weights differ by at most one factor per optimizer update), "
    "so they are shown once; report.json has each one's numbers."
)


def _fewer_buckets_note(used: int, requested: int) -> str:
    return (
        f"{used} of {requested} length buckets hold responses: responses of equal length are never split between "
        f"buckets, and a bucket holds at least {MIN_ROWS_PER_BUCKET} responses."
    )


def _chart(document: ReportDocument, key: str) -> Chart:
    """The bar chart of each shown SPEC's share of gradient mass per bucket (``length_quartiles`` or ``difficulty``)."""
    buckets = document.comparison.length_quartiles if key == "length_quartiles" else document.comparison.difficulty
    assert buckets is not None
    kept = buckets.nonempty
    if key == "length_quartiles":
        categories = tuple(f"{token_span(buckets, i)} tokens" for i in kept)
    else:
        categories = tuple(buckets.names[i] for i in kept)
    series = []
    for spec in document.shown_specs:
        shares = getattr(document.results[spec.label], key)
        values = tuple(None if not math.isfinite(v := float(shares.grad_mass_share[i])) else 100 * v for i in kept)
        series.append((spec.label, spec.colour, values))
    title = (
        "Share of gradient mass by response length"
        if key == "length_quartiles"
        else "Share of gradient mass by prompt difficulty"
    )
    return Chart(title, categories, tuple(series), key)


def _change_sections(document: ReportDocument) -> list[Section]:
    shown = {spec.label for spec in document.shown_specs}
    changes = [change for change in document.changes if change.candidate in shown]
    if not changes:
        return []
    out = [Section("Changes against the base", 2, anchor="changes", nav="Changes", web_only=True)]
    for change in changes:
        tables = change_tables(document, change)
        blocks = (TableBlock(tables.moves), TableBlock(tables.ratio), note(tables.ratio_note))
        out.append(Section(f"{tables.base} → {tables.candidate}", 3, blocks, markdown_level=2))
        for prompts, heading in (
            (tables.prompts_gaining, "Prompts that gain the most"),
            (tables.prompts_losing, "Prompts that lose the most"),
        ):
            if prompts is not None and prompts.rows:
                out.append(Section(f"{heading} (share of their step's gradient mass)", 3, (TableBlock(prompts),)))
    return out


def _findings_sections(document: ReportDocument) -> list[Section]:
    intro = note("What ", Code("aggscope check"), " finds under each layout, worst first, grouped by code.", web_only=True)
    out = [Section("Findings", 2, (intro,), anchor="findings")]
    for findings in findings_tables(document):
        blocks: list[Block] = [note(f"modes checked: {findings.modes}")]
        if not findings.groups:
            blocks.append(note("No findings."))
        for group in findings.groups:
            count = f"{group.count:,} finding{'s' * (group.count != 1)}"
            shown = len(group.table.rows)
            suffix = "" if shown == group.count else f", the first {shown:,} shown"
            blocks.append(Group(f"{group.code} ({group.severity}): {count}{suffix}", (TableBlock(group.table),)))
        if findings.more > 0 and findings.omitted:
            blocks.append(
                note(
                    f"{findings.more:,} more findings: report.json holds the first {REPORT_FINDINGS_PER_CODE:,} of each code, ",
                    Code("aggscope check --json"),
                    " lists every one.",
                )
            )
        elif findings.more > 0:
            blocks.append(note(f"{findings.more:,} more findings in report.json."))
        if findings.cut is not None:
            shown = len(findings.cut.rows)
            suffix = "" if shown == findings.cut_total else f", the first {shown:,} shown (report.json has more)"
            blocks.append(Group(f"prompts cut by this layout: {findings.cut_total:,}{suffix}", (TableBlock(findings.cut),)))
        else:
            blocks.append(note("This layout cuts no prompt."))
        if findings.notes:
            blocks.append(Lines(tuple(f"note: {text}" for text in findings.notes)))
        out.append(Section(findings.layout, 3, tuple(blocks)))
    out.append(Section("Why tokens get no gradient", 3, (TableBlock(zero_grad_table(document)),)))
    return out


def explorer_block(document: ReportDocument) -> Explorer | None:
    """The drill-down's table of prompts (None without uids); each row opens the prompt's rows on the page."""
    data = document.drilldown
    if data is None:
        return None
    labels = [spec.label for spec in document.shown_specs]
    texts = any(prompt["text"] for prompt in data["prompts"])  # a text column only where the input has texts
    rows = []
    for prompt in data["prompts"]:
        cells = [str(prompt["step"]), prompt["uid"], *([(prompt["text"] or "")[-80:]] if texts else [])]  # its end: the question
        cells += [fmt.number(len(prompt["rows"])), fmt.number(sum(row["loss_tokens"] for row in prompt["rows"]))]
        cells += [fmt.number(prompt["grad_mass"][label]) for label in labels]
        rows.append(cells)
    headers = ["step", "uid", *(["text"] if texts else []), "responses", "loss tokens"]
    headers += [f"{label}: Σ|w·A|" for label in labels]
    shown, total = len(data["prompts"]), data["prompts_total"]
    text = (
        f"All {total:,} prompts."
        if shown == total
        else (
            f"{shown:,} of {total:,} prompts (at most {data['max_rows']:,} responses, those with findings and those that "
            "move the most first); report.json's drilldown holds the same."
        )
    )
    return Explorer(Table(headers, rows, [None] * len(rows), 2 + texts), text, tuple(labels), tuple(data["prompts"]))


UNRECOVERABLE_NOTE = (
    "The trainer knew these facts but its dump does not hold them; the numbers named after each are "
    "estimated, or can differ from what was trained."
)


def _unrecoverable_sections(document: ReportDocument) -> list[Section]:
    """The "Not in this dump" section: the trainer facts the input lacks and what each changes (report.json:
    ``input.unrecoverable``); none when it lacks nothing (canonical Parquet, ``log_batch``)."""
    facts = document.input.unrecoverable
    if not facts:
        return []
    lines = tuple(
        f"{fact['fact']}: {fact['affects']}" + (f" (modes: {', '.join(fact['modes'])})" if fact["modes"] else "")
        for fact in facts
    )
    return [Section("Not in this dump", 2, (note(UNRECOVERABLE_NOTE), Lines(lines)), anchor="unrecoverable")]
