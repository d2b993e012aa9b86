"""The report's document: every number a report shows, typed, built from a ``Breakdown``.

``build_document`` compares the SPECs (``aggscope.analysis.breakdown.compare_specs``: every summary
is the engine's, every finding check's), adds what the reader needs to tell the SPECs apart
(formula, layout, colour) and the opening sentences. ``ReportDocument.to_dict`` is ``report.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from aggscope import __version__
from aggscope.analysis.breakdown import Breakdown, Change, Comparison, SpecOutcome, compare_specs
from aggscope.analysis.breakdown.groups import drilldown
from aggscope.analysis.specs import Spec, describe_layout
from aggscope.present.colours import mode_colour
from aggscope.present.report.headline import SENTENCE_THRESHOLD, HeadlineItem, spec_layout_given


@dataclass(frozen=True)
class InputInfo:
    """What was read: the source, its steps and sizes, and the reader's remarks (``notes``)."""

    source: str
    steps: list[int]
    sequences: int
    prompts: int | None
    loss_tokens: int
    tokens: int
    lengths_estimated: bool
    notes: list[str]
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)  # what the dump cannot tell (``Unrecoverable``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "steps": self.steps,
            "sequences": self.sequences,
            "prompts": self.prompts,
            "loss_tokens": self.loss_tokens,
            "tokens": self.tokens,
            "lengths_estimated": self.lengths_estimated,
            "notes": self.notes,
            "unrecoverable": self.unrecoverable,
        }


@dataclass(frozen=True)
class SpecInfo:
    """A SPEC as the report lists it: its label, formula, layout and colour."""

    spec: Spec
    colour: str

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def formula(self) -> str:
        return self.spec.mode.formula

    @property
    def layout_text(self) -> str:
        return describe_layout(self.spec.layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "mode": self.spec.mode.name,
            "formula": self.formula,
            "overrides": dict(self.spec.overrides),
            "layout": self.spec.layout.to_dict(),
            "layout_text": self.layout_text,
            "colour": self.colour,
        }


@dataclass(frozen=True)
class ReportDocument:
    """Every number of a report; the first SPEC is the base of every comparison.

    Attributes:
        kind: ``report`` (every mode at one layout) or ``compare`` (candidates against a base).
        input: what was read.
        specs: the SPECs, in the order given.
        comparison: each SPEC's outcome and each candidate's change against the base.
        summary: the opening sentences.
        headline: every change the summary ranks, largest first (``negligible`` ones listed, not stated).
        drilldown: every prompt's rows for the page's drill-down, capped (None without uids).
        figures: figure name -> its file name beside the report (None: no figures made).
        version: the aggscope that made it.
    """

    kind: str
    input: InputInfo
    specs: list[SpecInfo]
    comparison: Comparison
    summary: tuple[str, ...] = ()
    headline: tuple[HeadlineItem, ...] = ()
    drilldown: dict[str, Any] | None = None
    figures: dict[str, str] | None = None
    version: str = __version__

    @property
    def base(self) -> str:
        return self.comparison.base

    @property
    def results(self) -> dict[str, SpecOutcome]:
        return self.comparison.outcomes

    @property
    def changes(self) -> list[Change]:
        return self.comparison.changes

    @property
    def shown_specs(self) -> list[SpecInfo]:
        """The SPECs the page shows: each group of coinciding SPECs once, as its first."""
        return [spec for spec in self.specs if self.comparison.shown_as(spec.label) == spec.label]

    def coinciding(self, label: str) -> list[str]:
        """The other SPECs that coincide with ``label`` (empty when none do)."""
        group = next((g.labels for g in self.comparison.coincide if label in g.labels), [label])
        return [other for other in group if other != label]

    @property
    def title(self) -> str:
        if self.kind == "compare":
            return f"aggscope compare: {self.base} → {', '.join(change.candidate for change in self.changes)}"
        return "aggscope report"

    def to_dict(self) -> dict[str, Any]:
        """``report.json``: plain JSON types, a value that is not finite as None."""
        comparison = self.comparison
        difficulty = comparison.difficulty
        document = _json_ready(
            {
                "kind": self.kind,
                "aggscope_version": self.version,
                "input": self.input.to_dict(),
                "base": self.base,
                "specs": [spec.to_dict() for spec in self.specs],
                "buckets": {
                    "length_quartiles": comparison.length_quartiles.to_dict(),
                    "length_deciles": comparison.length_deciles.to_dict(),
                    "difficulty": None if difficulty is None else difficulty.to_dict(),
                },
                "results": {label: outcome.to_dict() for label, outcome in self.results.items()},
                "changes": [change.to_dict() for change in self.changes],
                "coincide": [group.to_dict() for group in comparison.coincide],
                "layout_given": any(spec_layout_given(spec.spec.layout) for spec in self.specs),
                "summary": list(self.summary),
                "headline": {
                    "threshold_points": SENTENCE_THRESHOLD,
                    "changes": [item.to_dict() for item in self.headline],
                },
                "drilldown": self.drilldown,
            }
        )
        if self.figures is not None:
            document["figures"] = dict(self.figures)
        return document


def build_document(
    breakdown: Breakdown, kind: str, notes: Sequence[str] = (), unrecoverable: Sequence[dict[str, Any]] = ()
) -> ReportDocument:
    """Every number of the report, without its opening sentences (``aggscope.present.report`` adds them). The first SPEC is the base."""
    document = ReportDocument(
        kind=kind,
        input=InputInfo(
            source=breakdown.source,
            steps=breakdown.steps,
            sequences=breakdown.n_rows,
            prompts=breakdown.n_prompts if breakdown.has_groups else None,
            loss_tokens=breakdown.loss_tokens,
            tokens=sum(size.tokens for size in breakdown.step_sizes),
            lengths_estimated=breakdown.lengths_estimated,
            notes=list(notes),
            unrecoverable=list(unrecoverable),
        ),
        specs=[SpecInfo(spec, mode_colour(spec.mode.name)) for spec in breakdown.specs],
        comparison=compare_specs(breakdown),
    )
    shown = [spec.label for spec in document.shown_specs]  # a coinciding SPEC's rows add nothing
    return replace(document, drilldown=drilldown(breakdown, shown, _prompts_first(document)))


def _prompts_first(document: ReportDocument) -> set[tuple[int, str]]:
    """The prompts a drill-down keeps first: those with findings, then those that move the most."""
    first = {
        (finding.step, str(finding.uid))
        for outcome in document.results.values()
        for finding in outcome.checks.findings
        if finding.uid is not None and finding.step is not None
    }
    for change in document.changes:
        for move in (change.prompts_gaining or []) + (change.prompts_losing or []):
            first.add((move.step, move.uid))
    return first


def _json_ready(value: Any) -> Any:
    """Plain JSON types; a value that is not finite becomes None."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
