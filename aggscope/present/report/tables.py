"""The tables of a report, as text cells, built from its document; the HTML, the Markdown and the
terminal draw them.

Numbers are written the one way of ``aggscope.fmt``: counts with separators, floats with four
significant digits, shares with one decimal, ``–`` where a value is missing or not finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from aggscope import fmt
from aggscope.analysis.breakdown import Buckets, BucketShares, Change, PromptMove, Shift
from aggscope.analysis.breakdown.outcomes import finite_or_none, ratio_keys, report_findings_omitted
from aggscope.analysis.checks import CheckReport
from aggscope.analysis.checks.catalogue import SEVERITY_RANK, Finding
from aggscope.present.report.document import ReportDocument
from aggscope.present.report.sentences import length_bucket_text, points, token_span

STEP_ROWS = 50
FINDING_ROWS = 60
# The at-a-glance columns: key -> header. The terminal shows some of them (cli/report_cmd).
GLANCE_COLUMNS = {
    "weight_sum": "Σ weight",
    "grad_abs_sum": "Σ |w·A|",
    "ess_tokens": "ESS tokens",
    "long_short_ratio": "long/short",
    "longest_quarter": "longest ¼ mass",
    "positive": "positive-A mass",
    "no_gradient": "no gradient",
    "findings": "findings (E/W/I)",
}


@dataclass(frozen=True)
class Table:
    """A table every renderer draws: header cells, rows of cells, and per-row label colours.

    Attributes:
        align_left: how many leading columns are text (left-aligned); the others are numbers.
    """

    headers: list[str]
    rows: list[list[str]]
    colours: list[str | None]
    align_left: int = 1


def _rounded(value: float | None) -> int | None:
    """A count that is a float (the effective number of tokens), rounded; None when not finite."""
    value = finite_or_none(value)
    return None if value is None else round(value)


def severity_counts(checks: CheckReport) -> str:
    """``errors/warnings/infos`` of check's findings, e.g. ``1/4/12``."""
    counts = checks.counts()
    return "/".join(str(counts[level]) for level in ("error", "warning", "info"))


# ---- at a glance ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlanceRow:
    """One SPEC at a glance: its label, colour and a text cell per column key of ``GLANCE_COLUMNS``."""

    label: str
    colour: str
    cells: dict[str, str]


def glance_rows(document: ReportDocument) -> list[GlanceRow]:
    """One row per SPEC, for the report page and the terminal alike.

    ``findings`` is there for ``compare`` only: under one layout every mode shares check's findings,
    which get their own section instead.
    """
    rows = []
    last = document.comparison.length_quartiles.last  # the longest responses (ties are never split)
    for spec in document.shown_specs:
        outcome = document.results[spec.label]
        total = outcome.total
        cells = {
            "weight_sum": fmt.number(total.weight_sum),
            "grad_abs_sum": fmt.number(total.grad_abs_sum),
            "ess_tokens": fmt.number(_rounded(total.ess_tokens)),
            "long_short_ratio": fmt.number(total.long_short_ratio, 3),
            "longest_quarter": fmt.percent(float(outcome.length_quartiles.grad_mass_share[last])),
            "positive": fmt.percent(outcome.advantage_sign.positive_share),
            "no_gradient": fmt.number(outcome.no_gradient_tokens),
        }
        if document.kind == "compare":
            cells["findings"] = severity_counts(outcome.checks)
        label = " = ".join([spec.label, *document.coinciding(spec.label)])
        rows.append(GlanceRow(label, spec.colour, cells))
    return rows


def glance_table(rows: Sequence[GlanceRow]) -> Table:
    """The report page's at-a-glance table: every column the rows have."""
    keys = [key for key in GLANCE_COLUMNS if rows and key in rows[0].cells]
    return Table(
        ["mode", *(GLANCE_COLUMNS[key] for key in keys)],
        [[row.label, *(row.cells[key] for key in keys)] for row in rows],
        [row.colour for row in rows],
    )


def specs_table(document: ReportDocument) -> Table:
    """Each SPEC's label (in its colour), formula and layout."""
    return Table(
        ["mode" if document.kind == "report" else "SPEC", "weight of a loss token", "layout"],
        [[spec.label, spec.formula, spec.layout_text] for spec in document.specs],
        [spec.colour for spec in document.specs],
        align_left=3,
    )


def length_table(document: ReportDocument) -> Table:
    """Rows, tokens and each SPEC's share of gradient mass per length quartile."""
    shares = [document.results[spec.label].length_quartiles for spec in document.shown_specs]
    return _bucket_table(document, "length quartile", document.comparison.length_quartiles, shares, spans=True)


def difficulty_table(document: ReportDocument) -> Table | None:
    """The same per prompt difficulty; None without uids or rewards."""
    buckets = document.comparison.difficulty
    shares = [document.results[spec.label].difficulty for spec in document.shown_specs]
    if buckets is None or any(entry is None for entry in shares):
        return None
    return _bucket_table(document, "prompt difficulty", buckets, [entry for entry in shares if entry is not None], spans=False)


def _bucket_table(document: ReportDocument, title: str, buckets: Buckets, shares: list[BucketShares], *, spans: bool) -> Table:
    """One line per non-empty bucket; ``spans``: name the bucket's shortest and longest row's loss tokens."""
    labels = [spec.label for spec in document.shown_specs]
    token_share = buckets.token_share()
    rows = []
    prompts = [] if buckets.prompts is None else ["prompts"]
    for i, name in enumerate(buckets.names):
        if buckets.rows[i] == 0:
            continue
        rows.append(
            [
                name + (f" ({token_span(buckets, i)} tokens)" if spans else ""),
                *([] if buckets.prompts is None else [fmt.number(buckets.prompts[i])]),
                fmt.number(buckets.rows[i]),
                fmt.number(buckets.loss_tokens[i]),
                fmt.percent(float(token_share[i])),
                *(fmt.percent(float(entry.grad_mass_share[i])) for entry in shares),
            ]
        )
    return Table([title, *prompts, "responses", "loss tokens", "share of tokens", *labels], rows, [None] * len(rows))


# ---- changes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeTables:
    """The tables of one candidate against the base."""

    base: str
    candidate: str
    moves: Table
    ratio: Table
    ratio_note: str
    prompts_gaining: Table | None
    prompts_losing: Table | None


def _shift_lines(shift: Shift, names: Sequence[str | None]) -> list[list[str]]:
    """One table line per bucket (None: an empty bucket, left out): base share, candidate share, change."""
    return [
        [
            f"gradient mass on {name}",
            fmt.percent(float(shift.base_share[i])),
            fmt.percent(float(shift.candidate_share[i])),
            points(float(shift.change_points[i])),
        ]
        for i, name in enumerate(names)
        if name is not None
    ]


def _moves_table(document: ReportDocument, change: Change) -> Table:
    lines = []
    if change.length_quartiles is not None:
        bounds = document.comparison.length_quartiles
        names = [length_bucket_text(bounds, i) if bounds.rows[i] else None for i in range(len(bounds.names))]
        lines += _shift_lines(change.length_quartiles, names)
    sign_before, sign_after = change.advantage_sign
    b_pos, c_pos = sign_before.positive_share, sign_after.positive_share
    moved = None if b_pos is None or c_pos is None else 100 * (c_pos - b_pos)
    lines.append(["gradient mass on positive advantages", fmt.percent(b_pos), fmt.percent(c_pos), points(moved)])
    buckets = document.comparison.difficulty
    if change.difficulty is not None and buckets is not None:
        names = [f"{name} prompts" if buckets.rows[i] else None for i, name in enumerate(buckets.names)]
        lines += _shift_lines(change.difficulty, names)
    ess = change.ess_tokens
    relative = finite_or_none(ess.relative_change)
    lines.append(
        [
            "effective number of tokens",
            fmt.number(_rounded(ess.base)),
            fmt.number(_rounded(ess.candidate)),
            fmt.MISSING if relative is None else f"{100 * relative:+.1f}%".replace("-", "−"),
        ]
    )
    zero_before, zero_after = change.zero_grad_tokens
    lines.append(
        ["loss tokens with no gradient", fmt.number(zero_before), fmt.number(zero_after), fmt.number(zero_after - zero_before)]
    )
    return Table(["", change.base, change.candidate, "change"], lines, [None] * len(lines))


def _prompts_table(entries: list[PromptMove] | None) -> Table | None:
    """The prompts that gain (or lose) the most; None without uids."""
    if entries is None:
        return None
    return Table(
        ["step", "uid", "responses", "loss tokens", "mean reward", "base share of Σ|w·A|", "candidate share", "change"],
        [
            [
                str(e.step),
                e.uid,
                fmt.number(e.sequences),
                fmt.number(e.loss_tokens),
                fmt.number(e.mean_reward, 3),
                fmt.percent(e.base_share),
                fmt.percent(e.candidate_share),
                points(e.change_points),
            ]
            for e in entries
        ],
        [None] * len(entries),
        align_left=2,
    )


def change_tables(document: ReportDocument, change: Change) -> ChangeTables:
    """How the shares move, the weight ratio's quantiles and the prompts that move the most."""
    ratio = change.weight_ratio
    keys = ratio_keys()
    mean = ratio["mean"]
    relative = [fmt.MISSING if (value := ratio[k]) is None or not mean else fmt.number(value / mean, 3) for k in keys]
    return ChangeTables(
        base=change.base,
        candidate=change.candidate,
        moves=_moves_table(document, change),
        ratio=Table(["", *keys], [["w_candidate / w_base ÷ its mean", *relative]], [None]),
        ratio_note=f"{fmt.percent(ratio['share_above_mean'])} of loss tokens gain weight relative to the rest and "
        f"{fmt.percent(ratio['share_below_mean'])} lose; quantiles over loss tokens of the per-token weight ratio, "
        "divided by its token-weighted mean (1 = unchanged relative to the rest, since modes are scaled differently).",
        prompts_gaining=_prompts_table(change.prompts_gaining),
        prompts_losing=_prompts_table(change.prompts_losing),
    )


# ---- findings, zero gradient, steps ---------------------------------------------------------------
@dataclass(frozen=True)
class FindingGroup:
    """check's findings of one code under one layout: its worst severity, how many, the first rows."""

    code: str
    severity: str
    count: int
    table: Table


@dataclass(frozen=True)
class FindingsTable:
    """check's findings under one layout (the SPECs of one layout share them).

    Attributes:
        groups: the findings by code, worst code first, each with at most ``FINDING_ROWS`` rows.
        more: findings beyond the rows shown, left out of the tables.
        omitted: findings report.json leaves out too (beyond its first of each code).
        cut: the prompts each level of the layout cuts (``level, step, uid``), at most ``FINDING_ROWS``.
        cut_total: how many (level, prompt) pairs there are.
    """

    layout: str
    modes: str
    groups: list[FindingGroup]
    more: int
    notes: list[str]
    omitted: int = 0
    cut: Table | None = None
    cut_total: int = 0


def _finding_groups(checks: CheckReport) -> tuple[list[FindingGroup], int]:
    """The findings by code, in the order codes first appear (worst first), and how many are left out."""
    by_code: dict[str, list] = {}
    for finding in checks.findings:
        by_code.setdefault(finding.code, []).append(finding)
    groups, shown = [], 0
    for code, findings in by_code.items():
        rows = [
            [
                f.severity,
                "run" if f.step is None else str(f.step),
                fmt.MISSING if f.uid is None else str(f.uid),
                fmt.number(f.tokens),
                f.message,
            ]
            for f in findings[:FINDING_ROWS]
        ]
        shown += len(rows)
        table = Table(["severity", "step", "uid", "tokens", "message"], rows, [None] * len(rows), 5)
        groups.append(FindingGroup(code, findings[0].severity, len(findings), table))
    return groups, len(checks.findings) - shown


def _cut_table(checks: CheckReport) -> tuple[Table | None, int]:
    rows = [[level, str(step), str(uid)] for level, pairs in checks.cut_prompts.items() for step, uid in pairs]
    if not rows:
        return None, 0
    return Table(["cut by", "step", "uid"], rows[:FINDING_ROWS], [None] * min(len(rows), FINDING_ROWS), 3), len(rows)


def findings_tables(document: ReportDocument) -> list[FindingsTable]:
    """check's findings, once per distinct layout (the findings of every SPEC there, each under its own
    mode, shown once), grouped by code, worst first; and the prompts each layout cuts."""
    by_layout: dict[str, list[CheckReport]] = {}
    for spec in document.specs:
        by_layout.setdefault(spec.layout_text, []).append(document.results[spec.label].checks)
    out: list[FindingsTable] = []
    for layout_text, reports in by_layout.items():
        checks = _layout_checks(reports)
        groups, more = _finding_groups(checks)
        cut, cut_total = _cut_table(checks)
        out.append(
            FindingsTable(
                layout_text,
                ", ".join(checks.modes),
                groups,
                more,
                checks.notes,
                sum(report_findings_omitted(checks).values()),
                cut,
                cut_total,
            )
        )
    return out


def _layout_checks(reports: Sequence[CheckReport]) -> CheckReport:
    """One report of the SPECs that share a layout: each finding once, at the worst severity a SPEC's
    mode gives it (``CheckReport.for_mode`` keeps one mode's findings)."""
    if len(reports) == 1:
        return reports[0]
    worst: dict[tuple, Finding] = {}
    for report in reports:
        for finding in report.findings:
            key = (finding.code, finding.step, finding.uid, finding.rows, finding.message)
            if key not in worst or SEVERITY_RANK[finding.severity] < SEVERITY_RANK[worst[key].severity]:
                worst[key] = finding
    modes = [mode for report in reports for mode in report.modes]
    findings = sorted(worst.values(), key=lambda f: f.sort_key)
    return replace(reports[0], findings=findings, modes=list(dict.fromkeys(modes)))


def zero_grad_table(document: ReportDocument) -> Table:
    """Loss tokens with no gradient by check's cause (rows) and SPEC (columns)."""
    labels = [spec.label for spec in document.shown_specs]
    loss_tokens = max(document.input.loss_tokens, 1)
    causes: list[str] = []
    for label in labels:
        causes += [c for c, n in document.results[label].zero_grad.items() if n and c not in causes]
    rows = []
    for cause in [*causes, "total"]:
        cells = [cause.replace("_", " ")]
        for label in labels:
            per_cause = document.results[label].zero_grad
            tokens = sum(per_cause.values()) if cause == "total" else per_cause.get(cause, 0)
            cells.append(f"{fmt.number(tokens)} ({fmt.percent(tokens / loss_tokens)})")
        rows.append(cells)
    return Table(["cause", *labels], rows, [None] * len(rows))


def steps_table(document: ReportDocument) -> Table:
    """The first ``STEP_ROWS`` steps: each SPEC's effective number of tokens, the base's tokens with no gradient."""
    labels = [spec.label for spec in document.shown_specs]
    headers = ["step", *(f"{label}: ESS tokens" for label in labels), "no gradient (base)"]
    base = document.results[document.base]
    rows = []
    for i, step in enumerate(document.input.steps[:STEP_ROWS]):
        cells = [str(step)]
        cells += [fmt.number(_rounded(document.results[label].step_summaries[i].ess_tokens)) for label in labels]
        cells.append(fmt.number(base.no_gradient_in_step(i)))
        rows.append(cells)
    return Table(headers, rows, [None] * len(rows))
