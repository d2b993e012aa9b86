"""Weights over a run: every step analysed under the selected modes, merged in step order.

The per-step work is ``aggscope.core.weights.analyse_step``; this module collects its small
results (per-step summaries and per-sequence weights, never tokens) into the all-steps total that
``aggscope weights`` prints, optionally writing per-token weights as the steps go.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from aggscope.analysis.runner import Engine, Progress, SteppedRollouts, run
from aggscope.core.batch import SequenceStats, StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode
from aggscope.core.summaries import summarize
from aggscope.core.weights import StepAnalysis, StepSummary, analyse_step, analyse_steps
from aggscope.errors import AggscopeError
from aggscope.io.export import WeightsParquetWriter
from aggscope.io.reader import unrecoverable_of


@dataclass(frozen=True)
class WeightsReport:
    """The result of ``aggscope weights``: per-step summaries and the total over all steps."""

    layout: Layout
    modes: list[str]
    steps: list[StepSummary]
    total: StepSummary
    lengths_estimated: bool = False
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)  # what the dump cannot tell (``Unrecoverable``)

    def to_dict(self) -> dict[str, Any]:
        total = self.total.to_dict()
        del total["step"]
        total["steps"] = len(self.steps)
        return {
            "layout": self.layout.to_dict(),
            "modes": self.modes,
            "lengths_estimated": self.lengths_estimated,
            "unrecoverable": self.unrecoverable,
            "steps": [step.to_dict() for step in self.steps],
            "total": total,
        }


@dataclass(frozen=True)
class StepResult:
    """What the all-steps total needs from one step: its summary and per-sequence data (no tokens).

    Small enough to send back from a Ray task; ``row_weights`` holds each mode's ``[n_seqs]``
    float64 weights and ``stats`` the step's ``SequenceStats``, numpy.
    """

    summary: StepSummary
    stats: SequenceStats
    row_weights: dict[str, np.ndarray]
    has_groups: bool
    lengths_estimated: bool

    @classmethod
    def of(cls, analysis: StepAnalysis) -> StepResult:
        batch = analysis.batch
        row_weights = {name: result.row_weight for name, result in analysis.weights.items()}
        return cls(analysis.summary, batch.stats, row_weights, batch.has_groups, batch.lengths_estimated)


def weigh_step(batch: StepBatch, modes: Sequence[Mode], layout: Layout) -> StepResult:
    """The per-step work of ``aggscope weights`` (what an engine runs for each step)."""
    return StepResult.of(analyse_step(batch, modes, layout))


def weigh_steps(batches: list[StepBatch], modes: Sequence[Mode], layout: Layout) -> list[StepResult]:
    """``weigh_step`` of several steps at once (``analyse_steps``): the same results."""
    return [StepResult.of(analysis) for analysis in analyse_steps(batches, modes, layout)]


@dataclass
class WeightsAccumulator:
    """Collects per-step summaries and the per-sequence data the all-steps total needs.

    Only per-sequence quantities are kept, so memory grows with sequences, not tokens.
    """

    layout: Layout
    modes: list[Mode]
    steps: list[StepSummary] = field(default_factory=list)
    _stats: list[SequenceStats] = field(default_factory=list)
    _row_weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _any_groups: bool = False
    lengths_estimated: bool = False

    def add(self, result: StepResult) -> None:
        self.steps.append(result.summary)
        self._stats.append(result.stats)
        for name, row_weight in result.row_weights.items():
            self._row_weights.setdefault(name, []).append(row_weight)
        self._any_groups = self._any_groups or result.has_groups
        self.lengths_estimated = self.lengths_estimated or result.lengths_estimated

    def result(self) -> WeightsReport:
        stats = SequenceStats.concat(self._stats)
        steps = self.steps
        prompts = [s.prompts for s in steps]
        total = StepSummary(
            step=-1,
            sequences=sum(s.sequences for s in steps),
            prompts=sum(p for p in prompts if p is not None) if self._any_groups else None,
            tokens=sum(s.tokens for s in steps),
            loss_tokens=sum(s.loss_tokens for s in steps),
            modes={
                mode.name: summarize(stats, np.concatenate(self._row_weights.get(mode.name, [np.zeros(0, dtype=np.float64)])))
                for mode in self.modes
            },
        )
        return WeightsReport(self.layout, [m.name for m in self.modes], steps, total, self.lengths_estimated)


def run_weights(
    rollouts: SteppedRollouts | Iterable[StepBatch],
    modes: Sequence[Mode],
    layout: Layout,
    *,
    engine: Engine | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> WeightsReport:
    """Analyse every step, one at a time, and return the per-step and all-steps summaries.

    The steps' results are merged in step order, so the report is the same on every engine.

    Args:
        rollouts: the opened input (``aggscope.open_rollouts``), or steps in memory (any iterable).
        modes: the modes to compute.
        layout: the trainer configuration.
        engine: where the steps run (``aggscope.analysis.runner.open_engine``); None: this process.
        out: optional ``.parquet`` file for per-token weights, written as the steps go (local engine).
        progress: optional wrapper of the results as they come (a progress bar).
    """
    merger = WeightsAccumulator(layout, list(modes))
    facts = unrecoverable_of(rollouts)
    if out is None:
        one = functools.partial(weigh_step, modes=list(modes), layout=layout)
        several = functools.partial(weigh_steps, modes=list(modes), layout=layout)
        return replace(run(engine, rollouts, one, merger, progress, several), unrecoverable=facts)
    if engine is not None and engine.name != "local":
        raise AggscopeError(f"--out is written by the local engine; drop --engine {engine.name} to write per-token weights")
    with WeightsParquetWriter(out, modes) as writer:

        def weigh_and_write(batch: StepBatch) -> StepResult:
            analysis = analyse_step(batch, modes, layout)
            writer.write(analysis)
            return StepResult.of(analysis)

        return replace(run(engine, rollouts, weigh_and_write, merger, progress), unrecoverable=facts)
