"""Reports: every applicable mode at one layout (``full_report``), or candidates against a base (``compare``).

A report is a typed document built from a ``Breakdown`` (``document``: so every summary is the
engine's, ``analyse_step`` -> ``compute_weights`` -> ``summarize``), the figures of
``aggscope.present.figures``, and renderings of both from one list of sections (``sections``):
``report.html`` (one self-contained file, figures embedded as data URIs, nothing fetched from
anywhere; ``html``), ``report.md`` (figures beside it; ``markdown``) and ``report.json`` (every
number shown: ``ReportDocument.to_dict``). The document starts with a few plain sentences stating
the biggest changes (``sentences``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggscope.analysis.breakdown import Breakdown, run_breakdown
from aggscope.analysis.checks import CheckOptions
from aggscope.analysis.runner import Engine, Progress, SteppedRollouts
from aggscope.analysis.specs import Spec
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, resolve_mode
from aggscope.io.reader import Rollouts, unrecoverable_of
from aggscope.io.writing import atomic_directory
from aggscope.present.figure_set import encode_figures, make_figures
from aggscope.present.forked import Standby
from aggscope.present.outputs import earlier_output
from aggscope.present.report.document import ReportDocument, build_document
from aggscope.present.report.html import render_html, render_html_before_figures
from aggscope.present.report.markdown import render_markdown
from aggscope.present.report.sections import Page, Section, page, sections
from aggscope.present.report.sentences import headline_items, summary_sentences
from aggscope.present.report.tables import GlanceRow, glance_rows

if TYPE_CHECKING:  # matplotlib is imported only where a figure is built
    from matplotlib.figure import Figure

__all__ = [
    "GlanceRow",
    "Page",
    "Report",
    "ReportDocument",
    "ReportFiles",
    "Section",
    "build_document",
    "build_report",
    "compare",
    "full_report",
    "glance_rows",
    "page",
    "render_html",
    "render_markdown",
    "sections",
]


@dataclass(frozen=True)
class Report:
    """A finished report: its document and its figures.

    Attributes:
        kind: ``report`` (every mode at one layout) or ``compare`` (candidates against a base).
        data: every number shown, typed.
        figures: figure name -> matplotlib figure, each built on first use (``make_figures``).
    """

    kind: str
    data: ReportDocument
    figures: Mapping[str, Figure] = field(repr=False)

    @cached_property
    def document(self) -> dict[str, Any]:
        """``report.json``: every number shown, JSON-ready (non-finite values are None)."""
        return self.data.to_dict()

    @property
    def summary(self) -> list[str]:
        """The opening sentences."""
        return list(self.data.summary)

    def write(self, out_dir: str | os.PathLike[str], standby: Standby | None = None) -> ReportFiles:
        """Write ``report.html``, ``report.md``, ``report.json`` and one PNG per figure into ``out_dir``.

        The set appears whole or not at all, replacing the folder (``atomic_directory``): a kill, a
        full disk or another writer never leaves files of two reports, or half of one, in it. The
        texts (the page with a slot for each figure) are made while forked processes draw the
        figures (``encode_figures``); with ``standby`` (``figure_set.drawing_standby()``, forked
        before the input was read) the figures are drawn there.
        """
        assert self.data.figures is not None
        drawn = page(self.data)  # one list of sections, for both renderings
        files: dict[str, bytes] = {}

        html: list[Callable[[Mapping[str, bytes]], str]] = []

        def texts() -> None:
            files["report.json"] = report_json(self.document).encode()
            files["report.md"] = render_markdown(drawn).encode()
            html.append(render_html_before_figures(drawn))

        images = encode_figures(self.figures, "png", meanwhile=texts, standby=standby)
        files.update({self.data.figures[name]: data for name, data in images.items()})
        fill = html[0] if html else render_html_before_figures(drawn)  # a guard: encode_figures calls it once
        files["report.html"] = fill(images).encode()
        with atomic_directory(out_dir, earlier_output) as temporary:
            for name, data in files.items():
                (temporary / name).write_bytes(data)
        directory = Path(out_dir)
        return ReportFiles(
            html=directory / "report.html",
            markdown=directory / "report.md",
            json=directory / "report.json",
            figures={name: directory / self.data.figures[name] for name in images},
        )


def report_json(document: dict[str, Any]) -> str:
    """``report.json``'s text: indented, except that each drill-down prompt is one compact line.

    The drill-down holds most of the bytes (every row of up to a few hundred prompts), and
    ``json`` indents in pure Python but writes compact JSON in C: one line per prompt keeps the
    file easy to read and to grep by uid at a fraction of the cost.
    """
    drilldown = document.get("drilldown")
    if not isinstance(drilldown, dict) or not drilldown.get("prompts"):
        return json.dumps(document, indent=2) + "\n"
    marker = f"prompts-{secrets.token_hex(16)}"  # a string no input can hold: it is drawn now
    shell = {**document, "drilldown": {**drilldown, "prompts": marker}}
    lines = ",\n".join("      " + json.dumps(prompt, separators=(", ", ": ")) for prompt in drilldown["prompts"])
    text = json.dumps(shell, indent=2)
    return text.replace(json.dumps(marker), "[\n" + lines + "\n    ]") + "\n"


@dataclass(frozen=True)
class ReportFiles:
    """The files ``Report.write`` wrote."""

    html: Path
    markdown: Path
    json: Path
    figures: dict[str, Path]


# ---- entry points --------------------------------------------------------------------------------
def compare(
    rollouts: SteppedRollouts | Iterable[StepBatch],
    specs: Sequence[Spec],
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    source: str | None = None,
    notes: Sequence[str] | None = None,
    check_options: CheckOptions | None = None,
) -> Report:
    """Compare ``specs[1:]`` against ``specs[0]`` on every step (``aggscope compare``).

    Args:
        rollouts: the opened input (``aggscope.open_rollouts``), or steps in memory (any iterable).
        specs: the base, then the candidates (``aggscope.parse_spec``).
        engine: where the steps run (``aggscope.analysis.runner.open_engine``); None: this process.
        progress: optional wrapper of the steps' results as they come (a progress bar).
        source: where the steps came from, shown in the report; default the input's ``source``.
        notes: the reader's remarks on the input, shown in the report; default the input's ``notes``.
        check_options: ``check``'s thresholds, response cap and trainer in use (``CheckOptions``);
            with the trainer known, findings that model another trainer's behaviour are left out.
    """
    breakdown = run_breakdown(rollouts, specs, engine=engine, source=source, progress=progress, check_options=check_options)
    return build_report(breakdown, "compare", _notes(rollouts, notes), unrecoverable_of(rollouts))


def full_report(
    rollouts: SteppedRollouts | Iterable[StepBatch],
    modes: Sequence[Mode | str],
    layout: Layout,
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    source: str | None = None,
    notes: Sequence[str] | None = None,
    check_options: CheckOptions | None = None,
) -> Report:
    """Every given mode at one layout, against the first (``aggscope report``); arguments as ``compare``."""
    specs = [Spec(mode if isinstance(mode, Mode) else resolve_mode(mode), layout) for mode in modes]
    breakdown = run_breakdown(rollouts, specs, engine=engine, source=source, progress=progress, check_options=check_options)
    return build_report(breakdown, "report", _notes(rollouts, notes), unrecoverable_of(rollouts))


def _notes(rollouts: object, notes: Sequence[str] | None) -> Sequence[str]:
    if notes is not None:
        return notes
    return rollouts.notes if isinstance(rollouts, Rollouts) else ()


def build_report(
    breakdown: Breakdown, kind: str, notes: Sequence[str] = (), unrecoverable: Sequence[dict[str, Any]] = ()
) -> Report:
    """The document and figures of a breakdown; the first SPEC is the base of every comparison.

    ``unrecoverable``: what the input cannot tell (``aggscope.io.reader.unrecoverable_of``).
    """
    figures = make_figures(breakdown)
    document = build_document(breakdown, kind, notes, unrecoverable)
    document = replace(
        document,
        summary=tuple(summary_sentences(document)),
        headline=tuple(headline_items(document)),
        figures={name: f"{name}.png" for name in figures},
    )
    return Report(kind, document, figures)
