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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from aggscope.analysis.breakdown import Breakdown, run_breakdown
from aggscope.analysis.specs import Spec
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode
from aggscope.io.writing import atomic_output
from aggscope.present.figures import ensure_directory, figure_bytes, make_figures
from aggscope.present.report.document import ReportDocument, build_document
from aggscope.present.report.html import render_html
from aggscope.present.report.markdown import render_markdown
from aggscope.present.report.sections import Page, Section, page, sections
from aggscope.present.report.tables import GlanceRow, glance_rows

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
        figures: figure name -> matplotlib figure.
    """

    kind: str
    data: ReportDocument
    figures: dict[str, Figure] = field(repr=False)

    @cached_property
    def document(self) -> dict[str, Any]:
        """``report.json``: every number shown, JSON-ready (non-finite values are None)."""
        return self.data.to_dict()

    @property
    def summary(self) -> list[str]:
        """The opening sentences."""
        return list(self.data.summary)

    def write(self, out_dir: str | os.PathLike[str]) -> ReportFiles:
        """Write ``report.html``, ``report.md``, ``report.json`` and one PNG per figure into ``out_dir``.

        Each file appears whole or not at all; the directory is created when missing.
        """
        directory = ensure_directory(out_dir)
        assert self.data.figures is not None
        images = {name: figure_bytes(figure, "png") for name, figure in self.figures.items()}
        figure_paths = {name: _write(directory / self.data.figures[name], data) for name, data in images.items()}
        json_path = _write(directory / "report.json", (json.dumps(self.document, indent=2) + "\n").encode())
        drawn = page(self.data)  # one list of sections, for both renderings
        md_path = _write(directory / "report.md", render_markdown(drawn).encode())
        html_path = _write(directory / "report.html", render_html(drawn, images).encode())
        return ReportFiles(html=html_path, markdown=md_path, json=json_path, figures=figure_paths)


@dataclass(frozen=True)
class ReportFiles:
    """The files ``Report.write`` wrote."""

    html: Path
    markdown: Path
    json: Path
    figures: dict[str, Path]


def _write(path: Path, data: bytes) -> Path:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return path


# ---- entry points --------------------------------------------------------------------------------
def compare(batches: Iterable[StepBatch], specs: Sequence[Spec], *, source: str = "input", notes: Sequence[str] = ()) -> Report:
    """Compare ``specs[1:]`` against ``specs[0]`` on every step (``aggscope compare``).

    ``notes`` are the reader's remarks on the input (``rollouts.notes``), shown in the report.
    """
    return build_report(run_breakdown(batches, specs, source=source), "compare", notes)


def full_report(
    batches: Iterable[StepBatch], modes: Sequence[Mode], layout: Layout, *, source: str = "input", notes: Sequence[str] = ()
) -> Report:
    """Every given mode at one layout, against the first (``aggscope report``)."""
    specs = [Spec(mode, layout) for mode in modes]
    return build_report(run_breakdown(batches, specs, source=source), "report", notes)


def build_report(breakdown: Breakdown, kind: str, notes: Sequence[str] = ()) -> Report:
    """The document and figures of a breakdown; the first SPEC is the base of every comparison."""
    figures = make_figures(breakdown)
    document = replace(build_document(breakdown, kind, notes), figures={name: f"{name}.png" for name in figures})
    return Report(kind, document, figures)
