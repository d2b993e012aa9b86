"""One step's weights: every row's weight under a mode and layout, and the summaries built from it.

The weight of a loss token ``(i, t)`` is ``w_i * f[i, t]``: the row's weight under the mode (constant
over a row's loss tokens) times the batch's per-token factor ``f`` (``StepBatch.token_factor``, 1.0
where it has none: prime-rl's ``rl_weights`` under ``--use-dump-weights``). Its gradient weight is
``g[i, t] = w_i * f[i, t] * A[i, t]``. Summaries are built from per-sequence quantities
(``SequenceStats``) so no per-token array is touched after the batch is loaded, except where a
caller asks for per-token output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from aggscope.core.batch import SequenceStats, StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, ModeInputs, check_applicable, default_modes, resolve_mode_option, resolve_modes
from aggscope.core.segments import expand_to_tokens, ordered_sums
from aggscope.core.split import Split, split_step
from aggscope.errors import AggscopeError


@dataclass(frozen=True, eq=False)
class StepWeights:
    """The weights of one step under one mode and layout.

    Attributes:
        batch: the step.
        mode: the aggregation mode.
        layout: the trainer configuration.
        split: where every row landed.
        row_weight: ``[n_seqs]`` float64 weight ``w_i`` of row ``i``; a loss token's weight is ``w_i``
            times the batch's ``token_factor`` at it (where the batch has one).
    """

    batch: StepBatch
    mode: Mode
    layout: Layout
    split: Split
    row_weight: np.ndarray

    def token_weights(self, dtype: Any = None, rows: slice | None = None) -> Any:
        """``[n_tokens]`` weight of every token, 0 on masked tokens (of ``rows`` only, if given).

        Args:
            dtype: the result's dtype (numpy or torch; default float32).
            rows: a slice of sequences, or None for all.

        Returns:
            A torch tensor on the input's device when the batch was built from tensors, else a
            numpy array.
        """
        per_token, mask, _ = self._per_token(dtype, rows)
        per_token[~mask] = 0.0
        return self._as_output(per_token, dtype)

    def grad_weights(self, dtype: Any = None, rows: slice | None = None) -> Any:
        """``[n_tokens]`` gradient weight ``w * A`` of every token, 0 on masked tokens (of ``rows`` only, if given).

        Same arguments and result type as ``token_weights``.
        """
        per_token, mask, advantages = self._per_token(dtype, rows)
        per_token *= advantages.astype(per_token.dtype)
        per_token[~mask] = 0.0
        return self._as_output(per_token, dtype)

    def _per_token(self, dtype: Any, rows: slice | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's weight repeated over its tokens, with the mask and advantages of those tokens."""
        batch = self.batch
        first, last, _ = (rows or slice(0, batch.n_sequences)).indices(batch.n_sequences)
        offsets = batch.offsets[first : last + 1]  # [rows + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        weight = self.row_weight[first:last].astype(_host_dtype(dtype))  # [rows]
        per_token = expand_to_tokens(weight, offsets - start, stop - start)  # [tokens of rows]
        if batch.token_factor is not None:
            per_token *= batch.token_factor[start:stop].astype(per_token.dtype)  # w_i * f[i, t]
        return per_token, batch.loss_mask[start:stop], batch.advantages[start:stop]

    def _as_output(self, per_token: np.ndarray, dtype: Any) -> Any:
        """A tensor on the input's device (in ``dtype``) for a batch built from tensors, else the array."""
        device = self.batch.input_device
        if device is None:
            return per_token
        import torch  # the caller handed in tensors, so torch is loaded already

        tensor = torch.from_numpy(per_token)
        if isinstance(dtype, torch.dtype) and tensor.dtype != dtype:
            tensor = tensor.to(dtype)  # bfloat16 and float16: rounded once from float32
        return tensor if device.type == "cpu" else tensor.to(device)

    def summary(self) -> ModeSummary:
        return summarize(self.batch.stats, self.row_weight)


def split_batch(batch: StepBatch, layout: Layout, pass_index: int = 0) -> Split:
    """Where every row of the batch lands under the layout (``split_step`` with the batch's sizes),
    in pass ``pass_index`` (the passes differ only under ``layout.rank_shuffle_seed``).

    A row's sequence length, where the layout counts it (token budgets, verl's balancing), is its
    tokens in the input plus ``layout.prompt_tokens``: dumps hold the response, seldom the prompt.
    """
    if not layout.needs_lengths:
        return split_step(batch.n_sequences, batch.group_ids, layout, batch.step, pass_index=pass_index)
    try:
        lengths = batch.stats.lengths + layout.prompt_tokens
        return split_step(batch.n_sequences, batch.group_ids, layout, batch.step, lengths, pass_index)
    except AggscopeError as exc:  # a split by lengths fails on one step's data: say which
        raise AggscopeError(f"{batch.source} step {batch.step}: {exc.message}") from None


def compute_weights(batch: StepBatch, mode: Mode | str, layout: Layout | None = None, split: Split | None = None) -> StepWeights:
    """Weights of one step under one mode and layout.

    Args:
        batch: the step.
        mode: a ``Mode`` or any mode name or alias.
        layout: the trainer configuration (default: one mini-batch, one rank, no micro-batching).
        split: a split already computed for this batch and layout (its first pass), to share
            between modes.
    """
    layout = layout or Layout()
    (resolved,) = resolve_modes([mode]) if isinstance(mode, str) else (mode,)
    check_applicable(resolved, has_groups=batch.has_groups, max_seq_len=layout.max_seq_len, source=batch.source)
    if split is None:
        split = split_batch(batch, layout)
    return _weigh(batch, resolved, layout, split, _mode_inputs(batch, layout, split))


def _weigh(batch: StepBatch, resolved: Mode, layout: Layout, split: Split, inputs: ModeInputs) -> StepWeights:
    """``compute_weights`` of an applicable mode, the first pass's ``inputs`` built already (shared by the modes of a step)."""
    row_weight = resolved.weight(inputs)
    if layout.rank_shuffle_seed is not None and layout.passes > 1:
        # every pass draws its own mini-batches: the weight is the sum over the passes' splits
        for pass_index in range(1, layout.passes):
            row_weight = row_weight + resolved.weight(_mode_inputs(batch, layout, split_batch(batch, layout, pass_index)))
    elif layout.passes != 1:
        # every pass trains the same split with the same weights (Layout.passes): their sum
        row_weight = row_weight * float(layout.passes)
    return StepWeights(batch, resolved, layout, split, row_weight)


def weigh_modes(batch: StepBatch, modes: Sequence[Mode], layout: Layout, split: Split) -> dict[str, StepWeights]:
    """``compute_weights`` of each mode on one split (``split_batch(batch, layout)``), the modes sharing
    what they read (one ``ModeInputs``, built once)."""
    if not modes:
        return {}
    inputs = _mode_inputs(batch, layout, split)
    weights = {}
    for mode in modes:
        check_applicable(mode, has_groups=batch.has_groups, max_seq_len=layout.max_seq_len, source=batch.source)
        weights[mode.name] = _weigh(batch, mode, layout, split, inputs)
    return weights


def _mode_inputs(batch: StepBatch, layout: Layout, split: Split) -> ModeInputs:
    """What the modes read; its arrays are read-only, so the modes of a step can share them."""
    loss_tokens, lengths = batch.stats.loss_tokens.astype(np.float64), batch.stats.lengths.astype(np.float64)
    loss_tokens.flags.writeable = lengths.flags.writeable = False
    return ModeInputs(
        loss_tokens=loss_tokens,
        split=split,
        group_ids=batch.group_ids,
        n_groups=batch.n_groups,
        max_seq_len=layout.max_seq_len,
        lengths=lengths,
    )


@dataclass(frozen=True)
class ModeSummary:
    """What one mode does to a set of sequences (one step, or all steps).

    Attributes:
        loss_tokens: loss tokens.
        weight_sum: sum of token weights.
        grad_abs_sum: sum of ``|w * A|`` over loss tokens whose gradient weight is finite.
        grad_pos_sum: sum of ``w * A`` over loss tokens with finite positive advantage.
        grad_neg_sum: the same over negative advantages (a value <= 0).
        ess_tokens: effective number of tokens ``(sum w)^2 / sum w^2`` over loss tokens.
        long_short_ratio: mean per-token weight of the longest quarter of sequences (by loss
            tokens) over that of the shortest quarter.
        zero_grad_tokens: loss tokens whose gradient weight is exactly 0.
        nonfinite_grad_tokens: loss tokens whose gradient weight is NaN or infinite.
        min_token_weight, max_token_weight: extremes of the weight over loss tokens.
    """

    loss_tokens: int
    weight_sum: float
    grad_abs_sum: float
    grad_pos_sum: float
    grad_neg_sum: float
    ess_tokens: float | None
    long_short_ratio: float | None
    zero_grad_tokens: int
    nonfinite_grad_tokens: int
    min_token_weight: float | None
    max_token_weight: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a value that is not finite becomes None (every field is a number or None)."""
        return {name: _finite_or_none(getattr(self, name)) for name in _SUMMARY_FIELDS}


_SUMMARY_FIELDS = tuple(f.name for f in fields(ModeSummary))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(stats: SequenceStats, row_weight: np.ndarray) -> ModeSummary:
    """Summarise a mode from per-sequence quantities alone (``summarize_modes`` of one mode).

    Args:
        stats: per-sequence loss-token counts and advantage sums, ``[n_seqs]`` each.
        row_weight: ``[n_seqs]`` float64 weight ``w_i`` of each row.
    """
    (summary,) = summarize_modes(stats, [row_weight])
    return summary


def summarize_modes(stats: SequenceStats, row_weights: Sequence[np.ndarray]) -> list[ModeSummary]:
    """Summarise several modes of one set of sequences from per-sequence quantities alone.

    Float sums run in ``ordered_sum``'s order (all modes' sums in one ``ordered_sums``), so every
    summary is the one aggscope gave before, mode by mode.

    A row's token weights are ``w_i * f`` (``f`` the batch's per-token factor, 1.0 without one), so
    sums over tokens come from the rows' factor sums: ``sum_t w_i f = w_i * factor_sum_i``.

    Args:
        stats: per-sequence loss-token counts and advantage sums, ``[n_seqs]`` each.
        row_weights: one ``[n_seqs]`` float64 weight ``w_i`` per row for each of ``n_modes`` modes.
    """
    n_modes = len(row_weights)
    w = np.asarray(row_weights, dtype=np.float64).reshape(n_modes, stats.loss_tokens.size)  # [n_modes, n_seqs]
    has_tokens = stats.loss_tokens > 0  # [n_seqs]
    weight_finite = np.isfinite(w)
    w_finite = np.where(weight_finite, w, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite weight on a row without loss tokens: nan
        terms = [
            w * stats.factor_sum,  # sum_i w_i sum_t f (= sum_i w_i L_i without a factor)
            w * w * stats.factor_sq_sum,  # sum_i w_i^2 sum_t f^2
            w_finite * stats.adv_abs_sum,
            w_finite * stats.adv_pos_sum,
            w_finite * stats.adv_neg_sum,
        ]
    sums = ordered_sums(np.concatenate(terms)).reshape(5, n_modes)  # [5, n_modes]
    weight_sums, weight_sq_sums, abs_sums, pos_sums, neg_sums = sums.tolist()
    # g = w * A: zero where A == 0 (w > 0) or, on a zero-weight row, wherever A is finite;
    # not finite where A is not finite (0 * inf and 0 * nan are nan too) or w itself is not.
    zero_grad = np.where(w == 0, stats.loss_tokens - stats.nonfinite_adv_tokens, stats.zero_adv_tokens)
    zero_grad = np.where(weight_finite, zero_grad, 0).sum(axis=1).tolist()  # [n_modes]
    nonfinite_grad = np.where(weight_finite, stats.nonfinite_adv_tokens, stats.loss_tokens).sum(axis=1).tolist()
    # extremes of w_i * f over a row: at its smallest or largest factor (either, by the sign of w_i)
    with np.errstate(invalid="ignore"):
        low, high = (w * stats.factor_min)[:, has_tokens], (w * stats.factor_max)[:, has_tokens]
    any_tokens = bool(has_tokens.any())
    lowest = np.minimum(low, high).min(axis=1).tolist() if any_tokens else [None] * n_modes
    highest = np.maximum(low, high).max(axis=1).tolist() if any_tokens else [None] * n_modes
    ratios = long_short_ratios(stats.loss_tokens, w, stats.factor_sum)
    loss_tokens = int(stats.loss_tokens.sum())
    return [
        ModeSummary(
            loss_tokens=loss_tokens,
            weight_sum=weight_sums[m],
            grad_abs_sum=abs_sums[m],
            grad_pos_sum=pos_sums[m],
            grad_neg_sum=neg_sums[m],
            ess_tokens=weight_sums[m] * weight_sums[m] / weight_sq_sums[m] if weight_sq_sums[m] > 0 else None,
            long_short_ratio=ratios[m],
            zero_grad_tokens=int(zero_grad[m]),
            nonfinite_grad_tokens=int(nonfinite_grad[m]),
            min_token_weight=lowest[m],
            max_token_weight=highest[m],
        )
        for m in range(n_modes)
    ]


def long_short_ratio(loss_tokens: np.ndarray, row_weight: np.ndarray, factor_sum: np.ndarray | None = None) -> float | None:
    """Mean per-token weight of the longest quarter of sequences over the shortest quarter's.

    Sequences are ranked by loss-token count (ties by position); a quarter is
    ``max(1, n_seqs // 4)`` sequences. None with fewer than two sequences or when the shortest
    quarter has no loss token. ``factor_sum``: ``[n_seqs]`` each row's sum of its per-token factors
    (``SequenceStats.factor_sum``; None: its loss tokens), so a row's weight mass is ``w_i * factor_sum_i``.
    """
    return long_short_ratios(loss_tokens, np.asarray(row_weight).reshape(1, -1), factor_sum)[0]


def long_short_ratios(
    loss_tokens: np.ndarray, row_weights: np.ndarray, factor_sum: np.ndarray | None = None
) -> list[float | None]:
    """``long_short_ratio`` of each of ``n_modes`` modes: ``row_weights [n_modes, n_seqs]``, every
    quarter's sums in one ``ordered_sums``."""
    n_modes, n_seqs = row_weights.shape
    if n_seqs < 2:
        return [None] * n_modes
    quarter = max(1, n_seqs // 4)
    ranked = np.argsort(loss_tokens, kind="stable")  # [n_seqs] shortest first
    tokens = loss_tokens.astype(np.float64)
    mass_per_weight = tokens if factor_sum is None else factor_sum
    short, long = ranked[:quarter], ranked[-quarter:]
    with np.errstate(invalid="ignore"):  # 0 * inf is nan: the ratio is then None
        short_mass, long_mass = row_weights[:, short] * mass_per_weight[short], row_weights[:, long] * mass_per_weight[long]
    sums = ordered_sums(
        np.concatenate([tokens[short][None], tokens[long][None], short_mass, long_mass])
    ).tolist()  # [2 + 2 * n_modes]
    short_tokens, long_tokens = sums[0], sums[1]
    ratios: list[float | None] = []
    for m in range(n_modes):
        short_mean = sums[2 + m] / short_tokens if short_tokens else math.nan
        long_mean = sums[2 + n_modes + m] / long_tokens if long_tokens else math.nan
        ratios.append(
            long_mean / short_mean if math.isfinite(short_mean) and math.isfinite(long_mean) and short_mean != 0 else None
        )
    return ratios


# ---- many steps --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSummary:
    """One step's sizes and the summary of every mode."""

    step: int
    sequences: int
    prompts: int | None
    tokens: int
    loss_tokens: int
    modes: dict[str, ModeSummary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sequences": self.sequences,
            "prompts": self.prompts,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "modes": {name: summary.to_dict() for name, summary in self.modes.items()},
        }


@dataclass(frozen=True)
class StepAnalysis:
    """One step analysed under every selected mode: the summaries and the weights behind them."""

    batch: StepBatch
    split: Split
    weights: dict[str, StepWeights]
    summary: StepSummary


def select_modes(names: Sequence[str] | None, *, has_groups: bool, layout: Layout, source: str = "input") -> list[Mode]:
    """The modes to compute: the named ones (checked to apply), or every mode that applies."""
    if not names:
        return default_modes(has_groups=has_groups, max_seq_len=layout.max_seq_len)
    modes = resolve_mode_option(names)
    for mode in modes:
        check_applicable(mode, has_groups=has_groups, max_seq_len=layout.max_seq_len, source=source)
    return modes


def analyse_step(batch: StepBatch, modes: Sequence[Mode], layout: Layout) -> StepAnalysis:
    """Weights and summaries of one step under several modes, sharing one split."""
    split = split_batch(batch, layout)
    weights = weigh_modes(batch, modes, layout, split)
    summary = StepSummary(
        step=batch.step,
        sequences=batch.n_sequences,
        prompts=batch.n_groups if batch.has_groups else None,
        tokens=batch.n_tokens,
        loss_tokens=int(batch.stats.loss_tokens.sum()),
        modes=dict(zip(weights, summarize_modes(batch.stats, [result.row_weight for result in weights.values()]), strict=True)),
    )
    return StepAnalysis(batch, split, weights, summary)


def _host_dtype(dtype: Any) -> Any:
    """The numpy dtype to compute per-token results in: ``dtype`` itself, its numpy twin for a torch
    dtype (float32 for torch's half types, which numpy lacks), float32 by default."""
    if dtype is None:
        return np.float32
    if type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.")
        return np.float32 if name in ("float16", "bfloat16", "half") else np.dtype(name)
    return dtype
