"""Where the gradient goes under each SPEC: one pass over the steps, then breakdowns by row group.

``run_breakdown`` reads every step once and, for each distinct layout among the SPECs, runs the
engine (``analyse_step``) and ``check`` (``check_step``) on it with the SPECs' modes, so every
summary here is the engine's own (the same numbers as ``aggscope weights``) and every finding and
zero-gradient cause is check's (the same as ``aggscope check``). It keeps only per-sequence data (memory grows with sequences, not tokens),
plus one fixed-bin histogram of per-token gradient weights per SPEC. The breakdowns below (by
response length, prompt difficulty, prompt) group those per-row quantities; figures and reports
are built from them.

Notation: ``n_rows`` sequences of all steps in step order, ``n_prompts`` (step, uid) pairs,
``k`` buckets. A row's gradient mass is ``sum_t |w_i * A[i, t]|`` over its loss tokens with a
finite advantage, its weight mass ``w_i * L_i``; their sums over all rows are the engine's
``grad_abs_sum`` and ``weight_sum``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aggscope.analysis.checks import CheckAccumulator, StepCheck, check_step
from aggscope.analysis.runner import Engine, SteppedRollouts
from aggscope.analysis.specs import Spec, check_specs
from aggscope.analysis.weights import StepResult, WeightsAccumulator
from aggscope.core.batch import SequenceStats, StepBatch
from aggscope.core.layout import Layout, Split
from aggscope.core.segments import group_sum
from aggscope.core.weights import ModeSummary, StepSummary, analyse_step
from aggscope.errors import AggscopeError

DIFFICULTY_BUCKETS = ("hard", "medium", "easy", "unscored")
# Per-token gradient weights relative to the mode's mean: 10^-3 .. 10^3, ten bins per decade;
# values outside land in the end bins.
HISTOGRAM_LOG10_EDGES = np.linspace(-3.0, 3.0, 61)


@dataclass(frozen=True)
class TokenHistogram:
    """Loss tokens by gradient weight ``|w * A|`` relative to the mode's mean in their step.

    Attributes:
        log10_edges: ``[n_bins + 1]`` bin edges of ``log10(|g| / mean |g|)``.
        positive: ``[n_bins]`` token counts with a positive finite advantage.
        negative: ``[n_bins]`` the same for negative advantages.
    """

    log10_edges: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


@dataclass(frozen=True)
class SpecResult:
    """One SPEC over all steps.

    Attributes:
        spec: the mode and layout.
        row_weight: ``[n_rows]`` float64 engine weight ``w_i`` of each row, steps concatenated.
        steps: the engine's summary of each step.
        total: the engine's summary over all steps.
        histogram: per-token gradient weights.
    """

    spec: Spec
    row_weight: torch.Tensor
    steps: list[ModeSummary]
    total: ModeSummary
    histogram: TokenHistogram


@dataclass(frozen=True)
class Buckets:
    """Rows grouped into ``k`` buckets and what each bucket gets under each SPEC.

    Attributes:
        names: ``[k]`` bucket names.
        rows: ``[k]`` sequences per bucket.
        loss_tokens: ``[k]`` loss tokens per bucket.
        min_tokens, max_tokens: ``[k]`` loss tokens of the shortest and longest row of a bucket.
        grad_mass: label -> ``[k]`` gradient mass per bucket.
        weight_mass: label -> ``[k]`` weight mass per bucket.
    """

    names: list[str]
    rows: np.ndarray
    loss_tokens: np.ndarray
    min_tokens: np.ndarray
    max_tokens: np.ndarray
    grad_mass: dict[str, np.ndarray]
    weight_mass: dict[str, np.ndarray]

    def grad_share(self, label: str) -> np.ndarray:
        """``[k]`` share of the SPEC's gradient mass per bucket (NaN when there is none)."""
        return _share(self.grad_mass[label])

    def token_share(self) -> np.ndarray:
        return _share(self.loss_tokens.astype(np.float64))


def _share(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return values / total if total > 0 else np.full(values.shape, math.nan)


@dataclass(frozen=True)
class Breakdown:
    """Everything the figures and reports need, from one pass over the steps.

    Attributes:
        source: where the steps came from.
        specs: the SPECs, in the order given.
        steps: step number of each step read.
        step_sizes: sequences, prompts, tokens and loss tokens of each step.
        stats: ``[n_rows]`` per-sequence quantities of all steps.
        row_step: ``[n_rows]`` index of each row's step in ``steps``.
        row_prompt: ``[n_rows]`` index of each row's (step, uid) prompt, or None without uids.
        prompt_step: ``[n_prompts]`` index of each prompt's step.
        prompt_uid: ``[n_prompts]`` uid text of each prompt.
        prompt_rows: ``[n_prompts]`` sequences of each prompt.
        prompt_reward: ``[n_prompts]`` mean finite reward of each prompt (NaN: none), or None.
        reward_range: lowest and highest finite reward of any row, or None.
        results: SPEC label -> its weights and engine summaries.
        splits: layout -> the split of each step.
        group_ids: the uid codes of each step (None without uids), for split pictures.
        uid_labels: the uid text of each code, per step (None without uids).
        checks: what ``check`` reports under each layout, JSON-ready (``CheckReport.to_dict()``),
            with the modes of the SPECs at that layout.
        cut_prompts: layout -> per step, ``check``'s uids cut at each level (``mini_batch``,
            ``rank``, ``micro_batch``).
        lengths_estimated: True when some step's token counts were estimated from text.
    """

    source: str
    specs: list[Spec]
    steps: list[int]
    step_sizes: list[StepSummary]
    stats: SequenceStats
    row_step: torch.Tensor
    row_prompt: torch.Tensor | None
    prompt_step: torch.Tensor
    prompt_uid: list[str]
    prompt_rows: torch.Tensor
    prompt_reward: torch.Tensor | None
    reward_range: tuple[float, float] | None
    results: dict[str, SpecResult]
    splits: dict[Layout, list[Split]]
    group_ids: list[torch.Tensor | None]
    uid_labels: list[tuple[str, ...] | None]
    checks: dict[Layout, dict[str, Any]]
    cut_prompts: dict[Layout, list[dict[str, tuple[str, ...]]]]
    lengths_estimated: bool = False

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.specs]

    @property
    def n_rows(self) -> int:
        return int(self.row_step.numel())

    @property
    def n_prompts(self) -> int:
        return int(self.prompt_step.numel())

    @property
    def has_groups(self) -> bool:
        return self.row_prompt is not None

    @property
    def loss_tokens(self) -> int:
        return int(self.stats.loss_tokens.sum())

    def zero_grad_causes(self) -> dict[str, dict[str, int]]:
        """label -> cause -> loss tokens with no gradient (``check``'s accounting over all steps)."""
        return {spec.label: dict(self.checks[spec.layout]["zero_grad"][spec.mode.name]) for spec in self.specs}

    def step_zero_grad_causes(self, label: str) -> list[dict[str, int]]:
        """The same, step by step."""
        spec = next(s for s in self.specs if s.label == label)
        return [dict(step["zero_grad"][spec.mode.name]) for step in self.checks[spec.layout]["steps"]]

    # ---- per-row quantities --------------------------------------------------------------------
    def row_grad_mass(self, label: str) -> torch.Tensor:
        """``[n_rows]`` gradient mass of each row: ``|w_i| * sum_t |A[i, t]|`` over finite advantages."""
        weight = self.results[label].row_weight  # [n_rows]
        finite = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
        return finite.abs() * self.stats.adv_abs_sum

    def row_weight_mass(self, label: str) -> torch.Tensor:
        """``[n_rows]`` weight mass of each row: ``w_i * L_i``."""
        return self.results[label].row_weight * self.stats.loss_tokens.to(torch.float64)

    # ---- buckets -------------------------------------------------------------------------------
    def buckets(self, bucket_of_row: torch.Tensor, names: Sequence[str]) -> Buckets:
        """Sum rows into buckets ``0..k-1`` (``k = len(names)``), for every SPEC at once."""
        k = len(names)
        tokens = self.stats.loss_tokens  # [n_rows] int64
        rows = torch.bincount(bucket_of_row, minlength=k)  # [k]
        big = torch.iinfo(torch.int64).max
        min_tokens = torch.full((k,), big, dtype=torch.int64).scatter_reduce(0, bucket_of_row, tokens, reduce="amin")
        max_tokens = torch.zeros(k, dtype=torch.int64).scatter_reduce(0, bucket_of_row, tokens, reduce="amax")
        min_tokens = torch.where(rows > 0, min_tokens, torch.zeros_like(min_tokens))
        return Buckets(
            names=list(names),
            rows=rows.numpy(),
            loss_tokens=group_sum(tokens, bucket_of_row, k).numpy(),
            min_tokens=min_tokens.numpy(),
            max_tokens=max_tokens.numpy(),
            grad_mass={label: group_sum(self.row_grad_mass(label), bucket_of_row, k).numpy() for label in self.labels},
            weight_mass={label: group_sum(self.row_weight_mass(label), bucket_of_row, k).numpy() for label in self.labels},
        )

    def length_bucket_of_row(self, k: int, *, per_step: bool = False) -> torch.Tensor:
        """``[n_rows]`` length bucket ``0..k-1`` (shortest first) of each row.

        Rows are ranked by loss tokens (ties by position, steps in order), over all steps or
        within each step, and cut into ``k`` equal-count slices: ``bucket = k * rank // n``.
        """
        tokens = self.stats.loss_tokens
        if not per_step:
            return _rank_buckets(tokens, k)
        key = self.row_step * (int(tokens.max()) + 1 if tokens.numel() else 1) + tokens  # [n_rows] (step, length)
        ranked = torch.sort(key, stable=True).indices  # [n_rows] grouped by step, shortest first
        rank = torch.empty_like(ranked)
        rank[ranked] = torch.arange(ranked.numel())
        rows_per_step = torch.bincount(self.row_step, minlength=len(self.steps))  # [n_steps]
        step_start = torch.cumsum(rows_per_step, 0) - rows_per_step  # [n_steps]
        rank_in_step = rank - step_start[self.row_step]  # [n_rows]
        return self.row_step * k + (rank_in_step * k) // rows_per_step[self.row_step]

    def length_buckets(self, k: int) -> Buckets:
        """Rows in ``k`` equal-count length slices over all steps (quartiles: ``k = 4``)."""
        names = [f"{_ordinal(i + 1)} {_slice_name(k)}" for i in range(k)]
        return self.buckets(self.length_bucket_of_row(k), names)

    def difficulty_of_prompt(self) -> torch.Tensor | None:
        """``[n_prompts]`` index into ``DIFFICULTY_BUCKETS`` of each prompt, or None.

        A prompt's group mean reward is placed in the range of all finite rewards
        (``(mean - min) / (max - min)``, the success rate for 0/1 rewards): below 1/3 is hard,
        below 2/3 medium, else easy; a prompt with no finite reward is unscored. None without
        uids or rewards, or when every finite reward is the same.
        """
        reward = self.prompt_reward
        if reward is None or self.reward_range is None:
            return None
        low, high = self.reward_range
        if high == low:
            return None
        finite = torch.isfinite(reward)
        position = (reward - low) / (high - low)  # [n_prompts] in [0, 1]
        level = torch.where(position < 1 / 3, 0, torch.where(position < 2 / 3, 1, 2))
        return torch.where(finite, level, 3)

    def difficulty_buckets(self) -> Buckets | None:
        """Rows by their prompt's difficulty (see ``difficulty_of_prompt``), or None."""
        level = self.difficulty_of_prompt()
        if level is None or self.row_prompt is None:
            return None
        return self.buckets(level[self.row_prompt], DIFFICULTY_BUCKETS)

    # ---- prompts -------------------------------------------------------------------------------
    def unit_of_row(self) -> torch.Tensor:
        """``[n_rows]`` the prompt of each row, or the row itself when there are no uids."""
        return self.row_prompt if self.row_prompt is not None else torch.arange(self.n_rows)

    def prompt_grad_mass(self, label: str) -> torch.Tensor:
        """``[n_units]`` gradient mass of each prompt (of each row without uids)."""
        unit = self.unit_of_row()
        n_units = self.n_prompts if self.row_prompt is not None else self.n_rows
        return group_sum(self.row_grad_mass(label), unit, n_units)

    def prompt_weight_share(self, label: str) -> torch.Tensor:
        """``[n_prompts]`` each prompt's share of its step's weight mass (NaN where it is 0)."""
        if self.row_prompt is None:
            raise AggscopeError(f"{self.source}: prompt shares need a uid column")
        per_prompt = group_sum(self.row_weight_mass(label), self.row_prompt, self.n_prompts)  # [n_prompts]
        per_step = group_sum(per_prompt, self.prompt_step, len(self.steps))  # [n_steps]
        step_total = per_step[self.prompt_step]
        return torch.where(step_total > 0, per_prompt / step_total, torch.full_like(per_prompt, math.nan))

    def ratio_quantiles(self, base: str, candidate: str, quantiles: Sequence[float]) -> dict[str, float | None]:
        """Quantiles over loss tokens of the per-token weight ratio ``w_candidate / w_base``.

        Each row's ratio counts once per loss token. Rows whose base weight is 0 or not finite are
        left out (``excluded_tokens`` counts their loss tokens). Also gives the share of tokens whose
        weight grows (ratio > 1) and shrinks (ratio < 1), relative to the mean ratio, since modes
        are scaled differently (``token_sum`` weights are around 1, ``token_mean`` ones 1 / T).
        """
        w_base = self.results[base].row_weight
        w_cand = self.results[candidate].row_weight
        tokens = self.stats.loss_tokens
        usable = (tokens > 0) & torch.isfinite(w_base) & (w_base > 0) & torch.isfinite(w_cand)  # [n_rows]
        ratio = (w_cand[usable] / w_base[usable]).numpy()
        count = tokens[usable].numpy()
        out: dict[str, float | None] = {"excluded_tokens": float(tokens[~usable].sum())}
        total = float(count.sum())
        if total == 0:
            out.update({f"p{round(q * 100)}": None for q in quantiles})
            out.update({"mean": None, "share_above_mean": None, "share_below_mean": None})
            return out
        order = np.argsort(ratio, kind="stable")
        cumulative = np.cumsum(count[order])  # [n_usable] tokens up to and including each row
        for q in quantiles:
            # The smallest ratio with at least a share q of the tokens at or below it.
            index = int(np.searchsorted(cumulative, q * total, side="left"))
            out[f"p{round(q * 100)}"] = float(ratio[order][min(index, ratio.size - 1)])
        mean = float((ratio * count).sum() / total)
        relative = ratio / mean
        out["mean"] = mean
        out["share_above_mean"] = float(count[relative > 1 + 1e-9].sum() / total)
        out["share_below_mean"] = float(count[relative < 1 - 1e-9].sum() / total)
        return out


def _rank_buckets(values: torch.Tensor, k: int) -> torch.Tensor:
    ranked = torch.sort(values, stable=True).indices  # [n] ascending, ties by position
    rank = torch.empty_like(ranked)
    rank[ranked] = torch.arange(ranked.numel())
    return (rank * k) // max(values.numel(), 1)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _slice_name(k: int) -> str:
    return {4: "quartile", 10: "decile", 5: "quintile", 3: "tercile"}.get(k, f"1/{k}")


# ---- the pass over the steps -------------------------------------------------------------------
@dataclass
class _SpecAccumulator:
    spec: Spec
    row_weights: list[torch.Tensor] = field(default_factory=list)
    positive: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_LOG10_EDGES.size - 1, dtype=np.int64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_LOG10_EDGES.size - 1, dtype=np.int64))


@dataclass(frozen=True)
class _StepTokens:
    """The loss tokens of one step that a histogram counts: finite, non-zero advantage.

    Attributes:
        row: ``[n_counted]`` seq_index of each counted token.
        log10_abs_adv: ``[n_counted]`` float64 ``log10 |A|``.
        positive: ``[n_counted]`` bool, advantage > 0.
    """

    row: np.ndarray
    log10_abs_adv: np.ndarray
    positive: np.ndarray

    @classmethod
    def of(cls, batch: StepBatch) -> _StepTokens:
        advantages = batch.advantages.cpu().numpy()
        counted = batch.loss_mask.cpu().numpy() & np.isfinite(advantages) & (advantages != 0)  # [n_tokens]
        lengths = (batch.offsets[1:] - batch.offsets[:-1]).cpu().numpy()  # [n_seqs]
        row = np.repeat(np.arange(batch.n_sequences), lengths)[counted]
        kept = advantages[counted]
        return cls(row, np.log10(np.abs(kept).astype(np.float64)), kept > 0)


def _histogram(tokens: _StepTokens, row_weight: torch.Tensor, summary: ModeSummary) -> tuple[np.ndarray, np.ndarray]:
    """Count a step's tokens by ``log10(|g| / mean |g|)``, ``g = w_i * A``, mean over its loss tokens.

    Returns the (positive, negative) advantage counts per bin. Tokens whose gradient weight is 0
    or not finite are left out (``zero_grad_causes`` shows them).
    """
    bins = HISTOGRAM_LOG10_EDGES.size - 1
    positive, negative = np.zeros(bins, dtype=np.int64), np.zeros(bins, dtype=np.int64)
    if summary.loss_tokens == 0 or not summary.grad_abs_sum > 0 or not math.isfinite(summary.grad_abs_sum):
        return positive, negative
    mean_abs = summary.grad_abs_sum / summary.loss_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        log_weight = np.log10(row_weight.cpu().to(torch.float64).numpy() / mean_abs)  # [n_seqs], -inf where w = 0
    valid = np.isfinite(log_weight)[tokens.row]  # [n_counted]
    low, high = float(HISTOGRAM_LOG10_EDGES[0]), float(HISTOGRAM_LOG10_EDGES[-1])
    values = np.clip(tokens.log10_abs_adv + log_weight[tokens.row], low, high)
    for counts, keep in ((positive, valid & tokens.positive), (negative, valid & ~tokens.positive)):
        counts += np.histogram(values[keep], bins=bins, range=(low, high))[0]
    return positive, negative


@dataclass(frozen=True)
class _LayoutPart:
    """One step under one layout: the engine's result, the split and check's findings (CPU)."""

    weights: StepResult
    split: Split
    check: StepCheck
    histograms: dict[str, tuple[np.ndarray, np.ndarray]]  # SPEC label -> (positive, negative) counts


@dataclass(frozen=True)
class BreakdownStep:
    """What ``run_breakdown`` keeps of one step: per-sequence data only, no tokens.

    Small enough to send back from a Ray task (``breakdown_step`` is the per-step work).
    """

    step: int
    source: str
    has_groups: bool
    lengths_estimated: bool
    n_sequences: int
    n_tokens: int
    n_groups: int
    group_ids: torch.Tensor | None
    uid_labels: tuple[str, ...] | None
    rewards: torch.Tensor | None
    layouts: dict[Layout, _LayoutPart]


def _by_layout(specs: Sequence[Spec]) -> dict[Layout, list[Spec]]:
    layouts: dict[Layout, list[Spec]] = {}
    for spec in specs:
        layouts.setdefault(spec.layout, []).append(spec)
    return layouts


def breakdown_step(batch: StepBatch, specs: Sequence[Spec]) -> BreakdownStep:
    """Run the engine and ``check`` on one step under every SPEC (what an engine runs per step)."""
    check_specs(specs, has_groups=batch.has_groups, source=batch.source)
    tokens = _StepTokens.of(batch)
    parts = {}
    for layout, group in _by_layout(specs).items():
        modes = [s.mode for s in group]
        analysis = analyse_step(batch, modes, layout)
        histograms = {}
        for spec in group:
            row_weight = analysis.weights[spec.mode.name].row_weight
            histograms[spec.label] = _histogram(tokens, row_weight, analysis.summary.modes[spec.mode.name])
        check = check_step(batch, modes, layout, analysis.split)
        parts[layout] = _LayoutPart(StepResult.of(analysis), _split_cpu(analysis.split), check, histograms)
    return BreakdownStep(
        step=batch.step,
        source=batch.source,
        has_groups=batch.has_groups,
        lengths_estimated=batch.lengths_estimated,
        n_sequences=batch.n_sequences,
        n_tokens=batch.n_tokens,
        n_groups=batch.n_groups if batch.has_groups else 0,
        group_ids=None if batch.group_ids is None else batch.group_ids.cpu(),
        uid_labels=batch.uid_labels,
        rewards=None if batch.rewards is None else batch.rewards.cpu(),
        layouts=parts,
    )


def run_breakdown(batches: Iterable[StepBatch], specs: Sequence[Spec], *, source: str = "input") -> Breakdown:
    """Run the engine on every step under every SPEC and keep what the breakdowns need.

    Args:
        batches: the steps (any iterable, e.g. ``rollouts.iter_steps()``), read once.
        specs: the SPECs; those sharing a layout share one split per step.
        source: where the steps came from, for messages.
    """
    if not specs:
        raise AggscopeError("nothing to analyse: give at least one mode")
    return merge_breakdown((breakdown_step(batch, specs) for batch in batches), specs, source=source)


def run_breakdown_on(
    engine: Engine,
    rollouts: SteppedRollouts,
    specs: Sequence[Spec],
    *,
    source: str = "input",
    progress: Callable[[Iterator[Any]], Iterable[Any]] | None = None,
) -> Breakdown:
    """``run_breakdown`` with the per-step work on an engine (``local``, or one Ray task per step).

    The steps' results are merged in step order, so the breakdown equals the local engine's.

    Args:
        engine: where the steps run (``aggscope.analysis.runner.open_engine``).
        rollouts: the opened input (``open_rollouts``).
        progress: optional wrapper of the steps or results as they come (a progress bar).
    """
    if not specs:
        raise AggscopeError("nothing to analyse: give at least one mode")
    wrap = progress or (lambda items: items)
    if engine.name == "local":
        return run_breakdown(wrap(rollouts.iter_steps()), specs, source=source)
    parts = engine.map_steps(rollouts, functools.partial(breakdown_step, specs=list(specs)))
    return merge_breakdown(wrap(parts), specs, source=source)


def merge_breakdown(parts: Iterable[BreakdownStep], specs: Sequence[Spec], *, source: str = "input") -> Breakdown:
    """Merge the steps' ``BreakdownStep`` results, in the order given, into one ``Breakdown``."""
    layouts = _by_layout(specs)
    engines = {layout: WeightsAccumulator(layout, [s.mode for s in group]) for layout, group in layouts.items()}
    checkers = {layout: CheckAccumulator(layout) for layout in layouts}
    cut_prompts: dict[Layout, list[dict[str, tuple[str, ...]]]] = {layout: [] for layout in layouts}
    spec_acc = {spec.label: _SpecAccumulator(spec) for spec in specs}
    splits: dict[Layout, list[Split]] = {layout: [] for layout in layouts}
    steps: list[int] = []
    group_ids: list[torch.Tensor | None] = []
    uid_labels: list[tuple[str, ...] | None] = []
    row_steps: list[torch.Tensor] = []
    row_prompts: list[torch.Tensor] = []
    prompt_steps: list[torch.Tensor] = []
    prompt_uids: list[str] = []
    rewards: list[torch.Tensor] = []
    any_rewards = False
    has_groups: bool | None = None
    lengths_estimated = False
    n_prompts = 0
    stats_parts: list[SequenceStats] = []
    first_layout = next(iter(layouts))
    for part in parts:
        if has_groups is not None and part.has_groups != has_groups:
            raise AggscopeError(f"{part.source}: step {part.step} has {'no ' * has_groups}uid column unlike earlier steps")
        has_groups = part.has_groups
        lengths_estimated = lengths_estimated or part.lengths_estimated
        index = len(steps)
        steps.append(part.step)
        stats_parts.append(part.layouts[first_layout].weights.stats)  # the same under every layout
        row_steps.append(torch.full((part.n_sequences,), index, dtype=torch.int64))
        group_ids.append(part.group_ids)
        uid_labels.append(part.uid_labels)
        if part.group_ids is not None and part.uid_labels is not None:
            row_prompts.append(part.group_ids + n_prompts)
            prompt_steps.append(torch.full((part.n_groups,), index, dtype=torch.int64))
            prompt_uids.extend(part.uid_labels)
            n_prompts += part.n_groups
        any_rewards = any_rewards or part.rewards is not None
        rewards.append(
            part.rewards if part.rewards is not None else torch.full((part.n_sequences,), math.nan, dtype=torch.float64)
        )
        for layout, group in layouts.items():
            layout_part = part.layouts[layout]
            engines[layout].add(layout_part.weights)
            splits[layout].append(layout_part.split)
            checkers[layout].add(layout_part.check)
            cut_prompts[layout].append(layout_part.check.cut_prompts)
            for spec in group:
                accumulator = spec_acc[spec.label]
                accumulator.row_weights.append(layout_part.weights.row_weights[spec.mode.name])
                positive, negative = layout_part.histograms[spec.label]
                accumulator.positive += positive
                accumulator.negative += negative
    if not steps:
        raise AggscopeError(f"{source}: no steps to analyse")
    reports = {layout: engine.result() for layout, engine in engines.items()}
    results = {}
    for spec in specs:
        report = reports[spec.layout]
        accumulator = spec_acc[spec.label]
        results[spec.label] = SpecResult(
            spec=spec,
            row_weight=torch.cat(accumulator.row_weights),
            steps=[step.modes[spec.mode.name] for step in report.steps],
            total=report.total.modes[spec.mode.name],
            histogram=TokenHistogram(HISTOGRAM_LOG10_EDGES, accumulator.positive, accumulator.negative),
        )
    stats_all = SequenceStats.concat(stats_parts)
    row_step = torch.cat(row_steps)
    row_prompt = torch.cat(row_prompts) if has_groups else None
    prompt_step = torch.cat(prompt_steps) if has_groups else torch.zeros(0, dtype=torch.int64)
    prompt_reward = None
    reward_range = None
    if has_groups and any_rewards:
        assert row_prompt is not None
        reward = torch.cat(rewards)  # [n_rows]
        finite = torch.isfinite(reward)
        scored = group_sum(finite.to(torch.float64), row_prompt, n_prompts)  # [n_prompts]
        reward_sum = group_sum(torch.where(finite, reward, torch.zeros_like(reward)), row_prompt, n_prompts)
        prompt_reward = torch.where(scored > 0, reward_sum / scored.clamp(min=1), torch.full_like(reward_sum, math.nan))
        if bool(finite.any()):
            reward_range = (float(reward[finite].min()), float(reward[finite].max()))
    first = next(iter(reports.values()))
    return Breakdown(
        source=source,
        specs=list(specs),
        steps=steps,
        step_sizes=first.steps,
        stats=stats_all,
        row_step=row_step,
        row_prompt=row_prompt,
        prompt_step=prompt_step,
        prompt_uid=prompt_uids,
        prompt_rows=torch.bincount(row_prompt, minlength=n_prompts)
        if row_prompt is not None
        else torch.zeros(0, dtype=torch.int64),
        prompt_reward=prompt_reward,
        reward_range=reward_range,
        results=results,
        splits=splits,
        group_ids=group_ids,
        uid_labels=uid_labels,
        checks={layout: checker.result().to_dict() for layout, checker in checkers.items()},
        cut_prompts=cut_prompts,
        lengths_estimated=lengths_estimated,
    )


def _split_cpu(split: Split) -> Split:
    tensors: dict[str, Any] = {name: value.cpu() for name, value in vars(split).items() if isinstance(value, torch.Tensor)}
    return dataclasses.replace(split, **tensors)
