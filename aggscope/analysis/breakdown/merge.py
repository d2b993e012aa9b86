"""The breakdown of a run: the steps' ``BreakdownStep`` results merged, in step order, into one ``Breakdown``.

``run_breakdown`` is the one entry point: it runs ``breakdown_step`` on every step on an engine
(``aggscope.analysis.runner.run``) and merges the results with ``BreakdownMerger``, so every
summary is the engine's own (the same numbers as ``aggscope weights``) and every finding and
zero-gradient cause is check's (the same as ``aggscope check``), on every engine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aggscope.analysis.breakdown.model import HISTOGRAM_LOG10_EDGES, Breakdown, SpecResult, TokenHistogram
from aggscope.analysis.breakdown.step import BreakdownStep, LayoutPart, breakdown_step, breakdown_steps, by_layout
from aggscope.analysis.checks import CheckAccumulator, CheckOptions
from aggscope.analysis.runner import Engine, Progress, SteppedRollouts, run
from aggscope.analysis.specs import Spec
from aggscope.analysis.weights import WeightsAccumulator, WeightsReport
from aggscope.core.batch import SequenceStats, StepBatch
from aggscope.core.layout import Layout
from aggscope.core.segments import group_sum
from aggscope.core.split import Split
from aggscope.errors import AggscopeError
from aggscope.io.reader import Rollouts


def run_breakdown(
    rollouts: SteppedRollouts | Iterable[StepBatch],
    specs: Sequence[Spec],
    *,
    engine: Engine | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    check_options: CheckOptions | None = None,
) -> Breakdown:
    """Run the engine and ``check`` on every step under every SPEC and keep what the breakdowns need.

    The steps' results are merged in step order, so the breakdown is the same on every engine.

    Args:
        rollouts: the opened input (``aggscope.open_rollouts``), or steps in memory (any iterable,
            e.g. ``rollouts.iter_steps()``), read once.
        specs: the SPECs; those sharing a layout share one split per step.
        engine: where the steps run (``aggscope.analysis.runner.open_engine``); None: this process.
        source: where the steps came from, for messages and the reports; default the opened
            input's ``source``, else ``input``.
        progress: optional wrapper of the steps' results as they come (a progress bar).
        check_options: ``check``'s thresholds, response cap and trainer in use (``CheckOptions``);
            default ``CheckOptions()``: no cap, an unknown trainer.
    """
    if source is None:
        source = rollouts.source if isinstance(rollouts, Rollouts) else "input"
    options = check_options or CheckOptions()
    unused = rollouts.unused_fields if isinstance(rollouts, Rollouts) else ()
    merger = BreakdownMerger(specs, source=source, check_options=options, unused_fields=unused)
    step_fn = functools.partial(breakdown_step, specs=list(specs), check_options=options)
    steps_fn = functools.partial(breakdown_steps, specs=list(specs), check_options=options)
    return run(engine, rollouts, step_fn, merger, progress, steps_fn)


def _zero_histogram() -> np.ndarray:
    return np.zeros(HISTOGRAM_LOG10_EDGES.size - 1, dtype=np.int64)


@dataclass
class _SpecAccumulator:
    """One SPEC's per-row weights and histogram counts, step by step."""

    spec: Spec
    row_weights: list[np.ndarray] = field(default_factory=list)
    positive: np.ndarray = field(default_factory=_zero_histogram)
    negative: np.ndarray = field(default_factory=_zero_histogram)

    def add(self, part: LayoutPart) -> None:
        self.row_weights.append(part.weights.row_weights[self.spec.mode.name])
        positive, negative = part.histograms[self.spec.label]
        self.positive += positive
        self.negative += negative

    def result(self, report: WeightsReport) -> SpecResult:
        name = self.spec.mode.name
        return SpecResult(
            spec=self.spec,
            row_weight=np.concatenate(self.row_weights),
            steps=[step.modes[name] for step in report.steps],
            total=report.total.modes[name],
            histogram=TokenHistogram(HISTOGRAM_LOG10_EDGES, self.positive, self.negative),
        )


@dataclass
class _Rows:
    """The rows and prompts of the steps merged so far (the same under every layout)."""

    steps: list[int] = field(default_factory=list)
    stats: list[SequenceStats] = field(default_factory=list)
    row_step: list[np.ndarray] = field(default_factory=list)
    row_prompt: list[np.ndarray] = field(default_factory=list)
    prompt_step: list[np.ndarray] = field(default_factory=list)
    prompt_uid: list[str] = field(default_factory=list)
    prompt_text: list[str | None] = field(default_factory=list)
    any_texts: bool = False
    group_ids: list[np.ndarray | None] = field(default_factory=list)
    uid_labels: list[tuple[str, ...] | None] = field(default_factory=list)
    rewards: list[np.ndarray] = field(default_factory=list)
    any_rewards: bool = False
    has_groups: bool | None = None
    lengths_estimated: bool = False
    n_prompts: int = 0

    def add(self, part: BreakdownStep, stats: SequenceStats) -> None:
        if self.has_groups is not None and part.has_groups != self.has_groups:
            raise AggscopeError(f"{part.source}: step {part.step} has {'no ' * self.has_groups}uid column unlike earlier steps")
        self.has_groups = part.has_groups
        self.lengths_estimated = self.lengths_estimated or part.lengths_estimated
        index = len(self.steps)
        self.steps.append(part.step)
        self.stats.append(stats)
        self.row_step.append(np.full(part.n_sequences, index, dtype=np.int64))
        self.group_ids.append(part.group_ids)
        self.uid_labels.append(part.uid_labels)
        if part.group_ids is not None and part.uid_labels is not None:
            # Prompts are numbered across steps: a step's uid codes shift by the prompts before it.
            self.row_prompt.append(part.group_ids + self.n_prompts)
            self.prompt_step.append(np.full(part.n_groups, index, dtype=np.int64))
            self.prompt_uid.extend(part.uid_labels)
            self.prompt_text.extend(part.uid_texts if part.uid_texts is not None else [None] * part.n_groups)
            self.any_texts = self.any_texts or part.uid_texts is not None
            self.n_prompts += part.n_groups
        self.any_rewards = self.any_rewards or part.rewards is not None
        no_rewards = np.full(part.n_sequences, math.nan, dtype=np.float64)
        self.rewards.append(part.rewards if part.rewards is not None else no_rewards)

    def prompt_rewards(self, row_prompt: np.ndarray | None) -> tuple[np.ndarray | None, tuple[float, float] | None]:
        """``[n_prompts]`` mean finite reward of each prompt (NaN: none), and the range of all finite rewards."""
        if row_prompt is None or not self.any_rewards:
            return None, None
        reward = np.concatenate(self.rewards)  # [n_rows]
        finite = np.isfinite(reward)
        scored = group_sum(finite.astype(np.float64), row_prompt, self.n_prompts)  # [n_prompts]
        reward_sum = group_sum(np.where(finite, reward, 0.0), row_prompt, self.n_prompts)
        prompt_reward = np.where(scored > 0, reward_sum / np.maximum(scored, 1), math.nan)
        reward_range = (float(reward[finite].min()), float(reward[finite].max())) if bool(finite.any()) else None
        return prompt_reward, reward_range


class BreakdownMerger:
    """Takes the steps' ``BreakdownStep`` results in step order and makes one ``Breakdown`` of them.

    A ``Merger`` of ``aggscope.analysis.runner.run``: per layout it merges the engine's results
    (``WeightsAccumulator``) and check's (``CheckAccumulator``); per SPEC the per-row weights and
    histogram counts; and once, the rows and prompts of every step.
    """

    def __init__(
        self,
        specs: Sequence[Spec],
        *,
        source: str = "input",
        check_options: CheckOptions | None = None,
        unused_fields: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not specs:
            raise AggscopeError("nothing to analyse: give at least one mode")
        self.specs = list(specs)
        self.source = source
        self._layouts = by_layout(self.specs)
        self._weights = {layout: WeightsAccumulator(layout, [s.mode for s in group]) for layout, group in self._layouts.items()}
        options = check_options or CheckOptions()
        self._checks = {layout: CheckAccumulator(layout, options, tuple(unused_fields)) for layout in self._layouts}
        self._splits: dict[Layout, list[Split]] = {layout: [] for layout in self._layouts}
        self._cut_prompts: dict[Layout, list[dict[str, tuple[str, ...]]]] = {layout: [] for layout in self._layouts}
        self._per_spec = {spec.label: _SpecAccumulator(spec) for spec in self.specs}
        self._rows = _Rows()

    def add(self, part: BreakdownStep) -> None:
        first_layout = next(iter(self._layouts))
        self._rows.add(part, part.layouts[first_layout].weights.stats)  # the same stats under every layout
        for layout, group in self._layouts.items():
            layout_part = part.layouts[layout]
            self._weights[layout].add(layout_part.weights)
            self._splits[layout].append(layout_part.split)
            self._checks[layout].add(layout_part.check)
            self._cut_prompts[layout].append(layout_part.check.cut_prompts)
            for spec in group:
                self._per_spec[spec.label].add(layout_part)

    def result(self) -> Breakdown:
        rows = self._rows
        if not rows.steps:
            raise AggscopeError(f"{self.source}: no steps to analyse")
        reports = {layout: accumulator.result() for layout, accumulator in self._weights.items()}
        row_prompt = np.concatenate(rows.row_prompt) if rows.has_groups else None
        prompt_reward, reward_range = rows.prompt_rewards(row_prompt)
        no_prompts = np.zeros(0, dtype=np.int64)
        return Breakdown(
            source=self.source,
            specs=self.specs,
            steps=rows.steps,
            step_sizes=next(iter(reports.values())).steps,
            stats=SequenceStats.concat(rows.stats),
            row_step=np.concatenate(rows.row_step),
            row_prompt=row_prompt,
            prompt_step=np.concatenate(rows.prompt_step) if rows.has_groups else no_prompts,
            prompt_uid=rows.prompt_uid,
            prompt_rows=no_prompts if row_prompt is None else np.bincount(row_prompt, minlength=rows.n_prompts),
            prompt_reward=prompt_reward,
            reward_range=reward_range,
            results={spec.label: self._per_spec[spec.label].result(reports[spec.layout]) for spec in self.specs},
            splits=self._splits,
            group_ids=rows.group_ids,
            uid_labels=rows.uid_labels,
            checks={layout: checker.result() for layout, checker in self._checks.items()},
            cut_prompts=self._cut_prompts,
            lengths_estimated=rows.lengths_estimated,
            row_reward=np.concatenate(rows.rewards) if rows.any_rewards else None,
            prompt_text=rows.prompt_text if rows.any_texts else None,
        )
