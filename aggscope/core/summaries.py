"""Summaries of what a mode does to a set of sequences (``ModeSummary``), from per-sequence quantities
alone (``SequenceStats`` and each row's weight ``w_i``): one step, several steps stacked at once
(``summarize_steps``), or all steps of a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from aggscope.core.batch import SequenceStats
from aggscope.core.segments import ordered_sums, padded_positions, padded_width


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
    """Summarise several modes of one set of sequences from per-sequence quantities alone
    (``summarize_steps`` of one step).

    Args:
        stats: per-sequence loss-token counts and advantage sums, ``[n_seqs]`` each.
        row_weights: one ``[n_seqs]`` float64 weight ``w_i`` per row for each of ``n_modes`` modes.
    """
    (summaries,) = summarize_steps([stats], [row_weights])
    return summaries


def summarize_steps(stats: Sequence[SequenceStats], row_weights: Sequence[Sequence[np.ndarray]]) -> list[list[ModeSummary]]:
    """``summarize_modes`` of several steps at once: ``stats[s]`` and ``row_weights[s]`` (one
    ``[n_seqs]`` weight per mode) of step ``s`` give its modes' summaries, ``[s][m]``.

    The steps are stacked and summarised together (``_stacks``): every quantity is computed row by
    row, and every float sum runs in ``ordered_sum``'s order on its own row, steps of other sizes
    on rows padded with +0.0 where the padding changes no sum (``padded_positions``). So each step's
    summaries are the ones it gets alone, bit for bit, while the numpy calls are paid once for the
    stack instead of once per step.

    A row's token weights are ``w_i * f`` (``f`` the batch's per-token factor, 1.0 without one), so
    sums over tokens come from the rows' factor sums: ``sum_t w_i f = w_i * factor_sum_i``.
    """
    summaries: list[list[ModeSummary]] = [[] for _ in stats]
    sizes = [step.loss_tokens.size for step in stats]
    for indices, width in _stacks(sizes, [len(weights) for weights in row_weights]):
        if len(row_weights[indices[0]]) == 0:
            continue  # no mode: nothing to summarise
        stack = _Stack.of([stats[i] for i in indices], [row_weights[i] for i in indices], width)
        for index, step_summaries in zip(indices, _summarize_stack(stack), strict=True):
            summaries[index] = step_summaries
    return summaries


def _stacks(sizes: Sequence[int], n_modes: Sequence[int]) -> list[tuple[list[int], int | None]]:
    """The steps summarised together, as ``(indices, width)``: steps of one number of modes; those of
    one size side by side (width None), those of several sizes on padded rows of ``width`` where
    they are short enough (``padded_width``), the longer ones by size."""
    stacks: list[tuple[list[int], int | None]] = []
    by_modes: dict[int, list[int]] = {}
    for index, count in enumerate(n_modes):
        by_modes.setdefault(count, []).append(index)
    for indices in by_modes.values():
        if len({sizes[i] for i in indices}) == 1:
            stacks.append((indices, None))
            continue
        short = [i for i in indices if padded_width([sizes[i]]) is not None]
        short = short if len({sizes[i] for i in short}) > 1 else []
        if short:
            stacks.append((short, padded_width([sizes[i] for i in short])))
        by_size: dict[int, list[int]] = {}
        for index in sorted(set(indices) - set(short)):
            by_size.setdefault(sizes[index], []).append(index)
        stacks.extend((same, None) for same in by_size.values())
    return stacks


@dataclass(frozen=True)
class _Stack:
    """The ``SequenceStats`` of ``n_steps`` steps as ``[n_steps, 1, width]`` arrays (ready to
    broadcast against the weights ``w [n_steps, n_modes, width]``).

    Steps of one size fill their rows (``width`` is that size); steps of several sizes sit at
    ``padded_positions`` of rows of ``padded_width``, padded with rows that hold nothing (no token,
    weight 0), which add +0.0 to every sum and nothing to any count.
    """

    loss_tokens: np.ndarray
    zero_adv_tokens: np.ndarray
    nonfinite_adv_tokens: np.ndarray
    adv_abs_sum: np.ndarray
    adv_sum: np.ndarray
    factor_sum: np.ndarray
    factor_sq_sum: np.ndarray
    factor_min: np.ndarray
    factor_max: np.ndarray
    w: np.ndarray
    lengths: list[int]  # each step's sequences
    real: np.ndarray | None  # [n_steps, width] where a step's sequences are (None: everywhere)

    @classmethod
    def of(cls, stats: Sequence[SequenceStats], weights: Sequence[Sequence[np.ndarray]], width: int | None) -> _Stack:
        names = [f.name for f in fields(cls)][:-3]
        n_steps, n_modes, lengths = len(stats), len(weights[0]), [step.loss_tokens.size for step in stats]
        if width is None:
            if n_steps == 1:
                arrays = {name: getattr(stats[0], name)[None, None] for name in names}
            else:
                arrays = {name: np.stack([getattr(step, name) for step in stats])[:, None] for name in names}
            w = np.asarray(weights, dtype=np.float64).reshape(n_steps, n_modes, lengths[0])
            return cls(**arrays, w=w, lengths=lengths, real=None)
        into = _places(lengths, width)  # [all sequences] flat positions in the padded stack

        def padded(values: np.ndarray, rows: int = 1) -> np.ndarray:  # [rows, all sequences] -> [n_steps, rows, width]
            out = np.zeros((rows, n_steps * width), dtype=values.dtype)
            out[:, into] = values
            return out.reshape(rows, n_steps, width).transpose(1, 0, 2)

        arrays = {name: padded(np.concatenate([getattr(step, name) for step in stats])) for name in names}
        w = padded(np.concatenate([np.asarray(step, dtype=np.float64).reshape(n_modes, -1) for step in weights], axis=1), n_modes)
        real = np.zeros(n_steps * width, dtype=bool)
        real[into] = True
        return cls(**arrays, w=w, lengths=lengths, real=real.reshape(n_steps, width))


def _places(lengths: Sequence[int], width: int) -> np.ndarray:
    """Flat positions, in a stack of rows of ``width``, of the values of rows of ``lengths`` (``padded_positions``)."""
    return np.concatenate([padded_positions(n, width) + row * width for row, n in enumerate(lengths)])


def _summarize_stack(stack: _Stack) -> list[list[ModeSummary]]:
    """The summaries ``[n_steps][n_modes]`` of a stack of steps."""
    w = stack.w
    n_steps, n_modes, width = w.shape
    has_tokens = stack.loss_tokens > 0  # [n_steps, 1, width]
    weight_finite = np.isfinite(w)
    w_finite = np.where(weight_finite, w, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite weight on a row without loss tokens: nan
        terms = [
            w * stack.factor_sum,  # sum_i w_i sum_t f (= sum_i w_i L_i without a factor)
            w * w * stack.factor_sq_sum,  # sum_i w_i^2 sum_t f^2
            w_finite * stack.adv_abs_sum,
            w_finite * ((stack.adv_abs_sum + stack.adv_sum) / 2),  # the positive advantages (``adv_pos_sum``)
            w_finite * ((stack.adv_sum - stack.adv_abs_sum) / 2),  # the negative ones (``adv_neg_sum``)
        ]
        lowest, highest = _extremes(stack, has_tokens)
    sums = ordered_sums(np.stack(terms, axis=1).reshape(n_steps * 5 * n_modes, width)).reshape(n_steps, 5, n_modes).tolist()
    # g = w * A: zero where A == 0 (w > 0) or, on a zero-weight row, wherever A is finite;
    # not finite where A is not finite (0 * inf and 0 * nan are nan too) or w itself is not.
    zero_grad = np.where(w == 0, stack.loss_tokens - stack.nonfinite_adv_tokens, stack.zero_adv_tokens)
    zero_grad = np.where(weight_finite, zero_grad, 0).sum(axis=2).tolist()  # [n_steps][n_modes]
    nonfinite_grad = np.where(weight_finite, stack.nonfinite_adv_tokens, stack.loss_tokens).sum(axis=2).tolist()
    any_tokens = np.asarray(has_tokens.any(axis=2))[:, 0].tolist()  # [n_steps]
    ratios = _long_short_stack(stack)
    loss_tokens = stack.loss_tokens.sum(axis=2)[:, 0].tolist()
    return [
        [
            ModeSummary(
                loss_tokens=int(loss_tokens[s]),
                weight_sum=weight_sum,
                grad_abs_sum=sums[s][2][m],
                grad_pos_sum=sums[s][3][m],
                grad_neg_sum=sums[s][4][m],
                ess_tokens=weight_sum * weight_sum / weight_sq_sum if weight_sq_sum > 0 else None,
                long_short_ratio=ratios[s][m],
                zero_grad_tokens=int(zero_grad[s][m]),
                nonfinite_grad_tokens=int(nonfinite_grad[s][m]),
                min_token_weight=lowest[s][m] if any_tokens[s] else None,
                max_token_weight=highest[s][m] if any_tokens[s] else None,
            )
            for m, (weight_sum, weight_sq_sum) in enumerate(zip(sums[s][0], sums[s][1], strict=True))
        ]
        for s in range(n_steps)
    ]


def _extremes(stack: _Stack, has_tokens: np.ndarray) -> tuple[list[list[float]], list[list[float]]]:
    """The least and greatest token weight ``[n_steps][n_modes]`` of each step's rows with loss tokens
    (meaningless for a step without any): ``w_i * f`` is extreme at a row's smallest or largest factor.

    A zero extreme is taken again over that step's rows with tokens alone, as one step reduces them:
    where +0.0 and -0.0 (zero weights times factors of both signs) are both extreme, numpy's min and
    max give either by where they stand, so only the same reduction gives the same sign."""
    w = stack.w
    n_steps, n_modes, width = w.shape
    if width == 0:
        return [[math.nan] * n_modes for _ in range(n_steps)], [[math.nan] * n_modes for _ in range(n_steps)]
    low, high = w * stack.factor_min, w * stack.factor_max
    least, greatest = np.minimum(low, high), np.maximum(low, high)
    lowest = np.where(has_tokens, least, np.inf).min(axis=2).tolist()
    highest = np.where(has_tokens, greatest, -np.inf).max(axis=2).tolist()
    for s in range(n_steps):
        if 0.0 in lowest[s] or 0.0 in highest[s]:
            rows = has_tokens[s, 0]
            if rows.any():
                lowest[s] = least[s][:, rows].min(axis=1).tolist()
                highest[s] = greatest[s][:, rows].max(axis=1).tolist()
    return lowest, highest


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
    """``long_short_ratio`` of each of ``n_modes`` modes: ``row_weights [n_modes, n_seqs]``."""
    n_seqs = loss_tokens.size
    mass = loss_tokens.astype(np.float64) if factor_sum is None else np.asarray(factor_sum, dtype=np.float64)
    zeros = np.zeros((1, 1, n_seqs))
    stack = _Stack(
        loss_tokens=loss_tokens[None, None],
        zero_adv_tokens=zeros,
        nonfinite_adv_tokens=zeros,
        adv_abs_sum=zeros,
        adv_sum=zeros,
        factor_sum=mass[None, None],
        factor_sq_sum=zeros,
        factor_min=zeros,
        factor_max=zeros,
        w=np.asarray(row_weights, dtype=np.float64).reshape(1, -1, n_seqs),
        lengths=[n_seqs],
        real=None,
    )
    return _long_short_stack(stack)[0]


def _long_short_stack(stack: _Stack) -> list[list[float | None]]:
    """``long_short_ratios`` of every step of a stack; every quarter's sums in one ``ordered_sums``.

    A step's sequences are ranked by loss tokens (stably; padding last), and its quarters' sums run
    on rows of their own length, padded as the stack's rows are where the quarters differ in length."""
    w, lengths = stack.w, stack.lengths
    n_steps, n_modes, width = w.shape
    if max(lengths) < 2:
        return [[None] * n_modes for _ in range(n_steps)]
    loss_tokens = stack.loss_tokens[:, 0]  # [n_steps, width]
    key = loss_tokens if stack.real is None else np.where(stack.real, loss_tokens, np.iinfo(np.int64).max)
    ranked = np.argsort(key, axis=1, kind="stable")  # [n_steps, width] each step's shortest first, padding last
    tokens = np.take_along_axis(loss_tokens.astype(np.float64), ranked, axis=1)[:, None]  # [n_steps, 1, width]
    with np.errstate(invalid="ignore"):  # 0 * inf is nan: the ratio is then None
        mass = (
            np.take_along_axis(w, ranked[:, None], axis=2) * np.take_along_axis(stack.factor_sum[:, 0], ranked, axis=1)[:, None]
        )
    ranked_rows = np.concatenate([tokens, mass], axis=1)  # [n_steps, 1 + n_modes, width] in rank order
    quarters = [max(1, n // 4) for n in lengths]
    if len(set(quarters)) == 1 and len(set(lengths)) == 1:
        q, n = quarters[0], lengths[0]
        short, long = ranked_rows[:, :, :q], ranked_rows[:, :, n - q : n]
    else:
        padded = padded_width(quarters)  # steps of several sizes are short (``_stacks``): so are their quarters
        assert padded is not None
        q = padded
        into = _places(quarters, q)
        short_from = np.concatenate([np.arange(quarter) + row * width for row, quarter in enumerate(quarters)])
        long_from = np.concatenate(
            [np.arange(n - quarter, n) + row * width for row, (n, quarter) in enumerate(zip(lengths, quarters, strict=True))]
        )
        flat = ranked_rows.transpose(1, 0, 2).reshape(1 + n_modes, n_steps * width)
        short, long = np.zeros((2, 1 + n_modes, n_steps * q))
        short[:, into], long[:, into] = flat[:, short_from], flat[:, long_from]
        short, long = (part.reshape(1 + n_modes, n_steps, q).transpose(1, 0, 2) for part in (short, long))
    rows = np.concatenate([short[:, :1], long[:, :1], short[:, 1:], long[:, 1:]], axis=1)  # [n_steps, 2 + 2 * n_modes, q]
    sums = ordered_sums(rows.reshape(-1, q)).reshape(n_steps, 2 + 2 * n_modes).tolist()
    ratios: list[list[float | None]] = []
    for n, step_sums in zip(lengths, sums, strict=True):
        short_tokens, long_tokens = step_sums[0], step_sums[1]
        step_ratios: list[float | None] = []
        for m in range(n_modes):
            short_mean = step_sums[2 + m] / short_tokens if short_tokens else math.nan
            long_mean = step_sums[2 + n_modes + m] / long_tokens if long_tokens else math.nan
            finite = math.isfinite(short_mean) and math.isfinite(long_mean) and short_mean != 0
            step_ratios.append(long_mean / short_mean if finite and n >= 2 else None)
        ratios.append(step_ratios)
    return ratios
