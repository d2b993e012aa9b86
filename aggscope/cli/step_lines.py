"""The compact per-step table of ``weights`` and ``check``: one line per step, the worst steps first.

A run of hundreds of steps cannot get a table per step; it gets one line per step instead, sorted
so the steps that need a look come first, the first ``SHOWN_STEPS`` of them unless ``--all-steps``
asks for every line. Nothing is dropped silently: the last line says how many steps are not shown
and how to see them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggscope import fmt
from aggscope.cli.text import Column, Row

if TYPE_CHECKING:
    from rich.console import Console

SHOWN_STEPS = 8


@dataclass(frozen=True)
class StepLine:
    """One step's line: its cells in column order, and the key that sorts the worst steps first."""

    step: int
    cells: tuple[str, ...]
    badness: tuple[float, ...]


def weights_step_lines(steps: Sequence[Any]) -> list[StepLine]:
    """The lines of ``aggscope weights``'s per-step table (``steps``: its ``StepSummary`` objects).

    A step is worse the more loss tokens get a non-finite gradient under some mode, then the larger
    the share of its loss tokens without gradient under some mode.
    """
    lines = []
    for step in steps:
        summaries = list(step.modes.values())
        no_grad = max((s.zero_grad_tokens + s.nonfinite_grad_tokens for s in summaries), default=0)
        nonfinite = max((s.nonfinite_grad_tokens for s in summaries), default=0)
        shares = [s.ess_tokens / step.loss_tokens for s in summaries if s.ess_tokens is not None and step.loss_tokens]
        no_grad_share = no_grad / step.loss_tokens if step.loss_tokens else 0.0
        cells = (
            fmt.number(step.step),
            fmt.number(step.sequences),
            fmt.number(step.loss_tokens),
            fmt.number(no_grad),
            fmt.percent(no_grad_share) if step.loss_tokens else fmt.MISSING,
            fmt.number(nonfinite),
            fmt.percent(min(shares)) if shares else fmt.MISSING,
        )
        lines.append(StepLine(step.step, cells, (nonfinite, no_grad_share)))
    return lines


WEIGHTS_COLUMNS = (
    Column("step"),
    Column("sequences", "seqs"),
    Column("loss tokens", "loss tok"),
    Column("no gradient", "no grad"),
    Column("share"),
    Column("non-finite", "NaN/inf"),
    Column("lowest ESS share", "min ESS"),
)
WEIGHTS_ORDER = "most tokens with a non-finite gradient, then the largest share without gradient, under any mode"


def check_step_lines(report: Any) -> list[StepLine]:
    """The lines of ``aggscope check``'s per-step table (``report``: its ``CheckReport``).

    A step is worse the more errors it has, then warnings, then infos, then the larger the share of
    its loss tokens without gradient under some mode.
    """
    lines = []
    for step in report.steps:
        no_grad = max((sum(causes.values()) for causes in step.zero_grad.values()), default=0)
        share = no_grad / step.loss_tokens if step.loss_tokens else 0.0
        counts = report.counts(step.step)
        severities = [counts.get(severity, 0) for severity in ("error", "warning", "info")]
        cells = (
            fmt.number(step.step),
            fmt.number(step.loss_tokens),
            fmt.number(no_grad),
            fmt.percent(share) if step.loss_tokens else fmt.MISSING,
            *(fmt.number(count) for count in severities),
        )
        lines.append(StepLine(step.step, cells, (*severities, share)))
    return lines


CHECK_COLUMNS = (
    Column("step"),
    Column("loss tokens", "loss tok"),
    Column("no gradient", "no grad"),
    Column("share"),
    Column("errors", "E"),
    Column("warnings", "W"),
    Column("infos", "I"),
)
CHECK_ORDER = "most errors, then warnings, infos, and the largest share without gradient under any mode"


def print_step_lines(
    console: "Console", lines: Sequence[StepLine], columns: Sequence[Column], order: str, all_steps: bool
) -> None:
    """The per-step table, the worst ``SHOWN_STEPS`` lines (every line with ``all_steps``), saying
    how the lines are sorted and how many are left out."""
    from rich.text import Text

    from aggscope.cli.render import fit_table, wrap_words

    ranked = sorted(lines, key=lambda line: (tuple(-value for value in line.badness), line.step))
    shown = ranked if all_steps else ranked[:SHOWN_STEPS]
    heading = f"{fmt.plural(len(lines), 'step')}, worst first ({order})"
    console.print(Text(wrap_words(heading, console.width), style="bold"))
    for table in fit_table(console, columns, [Row(line.cells) for line in shown]):
        console.print(table)
    hidden = len(ranked) - len(shown)
    if hidden:
        console.print(Text(f"… {fmt.plural(hidden, 'more step')} (--all-steps lists every step, --json gives all numbers)"))
