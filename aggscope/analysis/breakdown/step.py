"""The per-step work of the breakdown: the engine and ``check`` on one step, under every SPEC.

``breakdown_step`` is what an engine runs for each step (in this process, or as a Ray task): it
returns a ``BreakdownStep`` with per-sequence data only (per-sequence weights, the split, check's
findings and the histogram counts of the figures), never the step's tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggscope.analysis.breakdown.model import HISTOGRAM_LOG10_EDGES
from aggscope.analysis.checks import CheckOptions, StepCheck, check_steps
from aggscope.analysis.specs import Spec, check_specs
from aggscope.analysis.weights import StepResult
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.segments import segment_chunks
from aggscope.core.split import Split
from aggscope.core.summaries import ModeSummary
from aggscope.core.weights import analyse_steps


@dataclass(frozen=True)
class _StepTokens:
    """The loss tokens of one step that a histogram counts (finite, non-zero advantage), as runs.

    A run is consecutive counted tokens of one row with one advantage: every token of a run has
    the same ``|g| = w_row * |A|`` and so falls in the same bin, and a run counts as its length.
    Outcome-reward advantages (GRPO and its kin) are one value per row, so a step's histogram
    costs its rows, not its tokens; per-token advantages give about one run per token.

    Attributes:
        row: ``[n_runs]`` seq_index of each run.
        log10_abs_adv: ``[n_runs]`` float64 ``log10 |A|`` of the run's advantage.
        positive: ``[n_runs]`` bool, advantage > 0.
        length: ``[n_runs]`` int64 counted tokens in the run.
    """

    row: np.ndarray
    log10_abs_adv: np.ndarray
    positive: np.ndarray
    length: np.ndarray

    @classmethod
    def of(cls, batch: StepBatch) -> _StepTokens:
        """The runs of ``batch``, found in chunks of whole rows that stay in the CPU caches (a run never
        crosses a row, so the chunks' runs, joined, are the whole step's)."""
        # int32 row ids (built once per step, shared by every SPEC) halve the gather's memory traffic.
        row_dtype = np.int32 if batch.n_sequences < 2**31 else np.int64
        parts = [cls._of_rows(batch, first, last, row_dtype) for first, last in segment_chunks(batch.offsets, _RUNS_CHUNK)]
        if len(parts) == 1:
            return parts[0]
        fields = ("row", "log10_abs_adv", "positive", "length")
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in fields))

    @classmethod
    def _of_rows(cls, batch: StepBatch, first: int, last: int, row_dtype: type[np.signedinteger]) -> _StepTokens:
        """The runs of rows ``[first, last)``."""
        start, stop = int(batch.offsets[first]), int(batch.offsets[last])
        advantages = batch.advantages[start:stop]
        counted = batch.loss_mask[start:stop] & np.isfinite(advantages) & (advantages != 0)  # [chunk]
        lengths = batch.offsets[first + 1 : last + 1] - batch.offsets[first:last]  # [rows]
        row = np.repeat(np.arange(first, last, dtype=row_dtype), lengths)[counted]  # [n_counted]
        kept = advantages[counted]  # [n_counted]
        starts = np.ones(row.size, dtype=bool)  # a run starts where the row or the advantage changes
        np.not_equal(row[1:], row[:-1], out=starts[1:])
        starts[1:] |= kept[1:] != kept[:-1]
        run_start = np.flatnonzero(starts)  # [n_runs]
        run_length = np.diff(np.append(run_start, row.size))  # [n_runs]
        run_adv = kept[run_start]
        return cls(row[run_start], np.log10(np.abs(run_adv).astype(np.float64)), run_adv > 0, run_length)


_RUNS_CHUNK = 1 << 17  # tokens per chunk of rows in which runs are found (the best of 2^16-2^20 here, at 1e7 tokens)


def _histogram(tokens: _StepTokens, row_weight: np.ndarray, summary: ModeSummary) -> tuple[np.ndarray, np.ndarray]:
    """Count a step's tokens by ``log10(|g| / mean |g|)``, ``g = w_i * A``, mean over its loss tokens.

    Returns the (positive, negative) advantage counts per bin. Tokens whose gradient weight is 0
    or not finite are left out (``zero_grad_causes`` shows them).
    """
    bins = HISTOGRAM_LOG10_EDGES.size - 1
    if summary.loss_tokens == 0 or not summary.grad_abs_sum > 0 or not math.isfinite(summary.grad_abs_sum):
        return np.zeros(bins, dtype=np.int64), np.zeros(bins, dtype=np.int64)
    mean_abs = summary.grad_abs_sum / summary.loss_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        log_weight = np.log10(row_weight.astype(np.float64) / mean_abs)  # [n_seqs], -inf where w = 0
    valid_row = np.isfinite(log_weight)  # [n_seqs]
    row, log10_abs_adv, positive, length = tokens.row, tokens.log10_abs_adv, tokens.positive, tokens.length
    if not valid_row.all():  # rare (a row without weight): only then pay a per-run mask
        keep = valid_row[row]  # [n_runs]
        row, log10_abs_adv, positive, length = row[keep], log10_abs_adv[keep], positive[keep], length[keep]
    low, high = float(HISTOGRAM_LOG10_EDGES[0]), float(HISTOGRAM_LOG10_EDGES[-1])
    counts = np.zeros(2 * bins, dtype=np.int64)
    # Blocks that stay in the CPU cache through the dozen passes below (as np.histogram does);
    # negative-advantage runs count in bins [bins, 2 * bins): one bincount for both signs.
    for start in range(0, row.size, _HISTOGRAM_BLOCK):
        part = slice(start, start + _HISTOGRAM_BLOCK)
        values = np.clip(log10_abs_adv[part] + log_weight[row[part]], low, high)  # [block]
        index = uniform_bin_index(values, HISTOGRAM_LOG10_EDGES)
        index[~positive[part]] += bins
        # run lengths as float64 weights: exact for counts below 2**53
        counts += np.rint(np.bincount(index, weights=length[part], minlength=2 * bins)).astype(np.int64)
    return counts[:bins], counts[bins:]


_HISTOGRAM_BLOCK = 1 << 16


def uniform_bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[n]`` bin of each value among equal-width ``edges`` (``np.linspace``), exactly as ``np.histogram``.

    ``np.histogram`` sorts nothing for equal bins but checks and counts through masks of every
    value; this is its arithmetic (the scaled index, then the same one-step corrections at the
    edges, the last bin closed) without the rest. ``values`` must lie within the edges.
    """
    bins = edges.size - 1
    first, last = float(edges[0]), float(edges[-1])
    index = ((values - first) / (last - first) * bins).astype(np.intp)  # [n]
    index[index == bins] -= 1
    index[values < edges[index]] -= 1
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    return index


@dataclass(frozen=True)
class LayoutPart:
    """One step under one layout: the engine's result, the split and check's findings (numpy)."""

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
    group_ids: np.ndarray | None
    uid_labels: tuple[str, ...] | None
    rewards: np.ndarray | None
    layouts: dict[Layout, LayoutPart]
    uid_texts: tuple[str | None, ...] | None = None


def by_layout(specs: Sequence[Spec]) -> dict[Layout, list[Spec]]:
    """The SPECs grouped by layout, layouts in order of first appearance."""
    layouts: dict[Layout, list[Spec]] = {}
    for spec in specs:
        layouts.setdefault(spec.layout, []).append(spec)
    return layouts


def breakdown_step(batch: StepBatch, specs: Sequence[Spec], check_options: CheckOptions | None = None) -> BreakdownStep:
    """Run the engine and ``check`` on one step under every SPEC (what an engine runs per step);
    ``check_options`` as ``check_step`` takes them."""
    (step,) = breakdown_steps([batch], specs, check_options)
    return step


def breakdown_steps(
    batches: list[StepBatch], specs: Sequence[Spec], check_options: CheckOptions | None = None
) -> list[BreakdownStep]:
    """``breakdown_step`` of several steps at once, the same results: their weights are summarised
    together (``analyse_steps``), the rest step by step."""
    for batch in batches:
        check_specs(specs, has_groups=batch.has_groups, source=batch.source)
    tokens = [_StepTokens.of(batch) for batch in batches]
    parts: list[dict[Layout, LayoutPart]] = [{} for _ in batches]
    for layout, group in by_layout(specs).items():
        modes = [s.mode for s in group]
        analyses = analyse_steps(batches, modes, layout)
        checks = check_steps(
            batches,
            modes,
            layout,
            [analysis.split for analysis in analyses],
            check_options,
            [{name: result.row_weight for name, result in analysis.weights.items()} for analysis in analyses],
        )
        for step_tokens, analysis, check, step_parts in zip(tokens, analyses, checks, parts, strict=True):
            histograms = {}
            for spec in group:
                row_weight = analysis.weights[spec.mode.name].row_weight
                histograms[spec.label] = _histogram(step_tokens, row_weight, analysis.summary.modes[spec.mode.name])
            step_parts[layout] = LayoutPart(StepResult.of(analysis), analysis.split, check, histograms)
    return [
        BreakdownStep(
            step=batch.step,
            source=batch.source,
            has_groups=batch.has_groups,
            lengths_estimated=batch.lengths_estimated,
            n_sequences=batch.n_sequences,
            n_tokens=batch.n_tokens,
            n_groups=batch.n_groups if batch.has_groups else 0,
            group_ids=batch.group_ids,
            uid_labels=batch.uid_labels,
            rewards=batch.rewards,
            layouts=step_parts,
            uid_texts=None if batch.uid_texts is None else tuple(text_excerpt(text) for text in batch.uid_texts),
        )
        for batch, step_parts in zip(batches, parts, strict=True)
    ]


# Of each prompt's text the report's search keeps its start and its end (where a chat template puts
# the question, after a system prompt that every prompt shares), not the whole prompt.
PROMPT_TEXT_HEAD, PROMPT_TEXT_TAIL = 100, 300


def text_excerpt(text: str | None) -> str | None:
    """The start and the end of a prompt's text, ``…`` between them when the middle is left out."""
    if text is None or len(text) <= PROMPT_TEXT_HEAD + PROMPT_TEXT_TAIL:
        return text
    return f"{text[:PROMPT_TEXT_HEAD]} … {text[-PROMPT_TEXT_TAIL:]}"
