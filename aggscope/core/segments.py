"""Reductions over ragged segments of a flat array (one segment per sequence).

Notation: a flat token array of length ``n_tokens`` is cut into ``n_seqs`` contiguous segments by
``offsets`` (``[n_seqs + 1]``, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == n_tokens``).
Every function here is vectorised: no Python loop over segments or tokens.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np


def segment_sum(values: np.ndarray, offsets: np.ndarray, dtype: type[np.generic] = np.float64) -> np.ndarray:
    """Sum of ``values`` over each segment, accumulated in ``dtype``.

    Args:
        values: ``[n_tokens]`` numbers or booleans.
        offsets: ``[n_seqs + 1]`` int64 segment boundaries.
        dtype: accumulation and result dtype (float64 for sums, int64 for counts).

    Returns:
        ``[n_seqs]`` array of ``dtype``; empty segments sum to 0.
    """
    return segment_sum_numpy(values, offsets, dtype)


def segment_sum_numpy(values: np.ndarray, offsets: np.ndarray, np_dtype: type[np.generic]) -> np.ndarray:
    """``segment_sum`` on numpy arrays: ``[n_tokens] -> [n_seqs]`` sums accumulated in ``np_dtype``."""
    n_seqs = offsets.size - 1
    out = np.zeros(n_seqs, dtype=np_dtype)
    if values.size == 0 or n_seqs == 0:
        return out
    starts = offsets[:-1]
    nonempty = offsets[1:] > starts  # [n_seqs]
    # reduceat sums from one index to the next; passing only the starts of non-empty segments makes
    # each sum stop exactly at its segment's end, since the empty segments in between have no length.
    if values.dtype.kind == "f" and values.dtype != np_dtype:
        # Converting first gives the same sums bit for bit and is several times faster than
        # letting reduceat convert (it then goes through its buffered casting loop).
        values = values.astype(np_dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf advantages are data here
        out[nonempty] = np.add.reduceat(values, starts[nonempty], dtype=np_dtype)
    return out


def segment_count_numpy(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True ``flags`` in each segment: ``[n_tokens] bool -> [n_seqs] int64``.

    Most flags counted here (masked tokens, non-finite or masked non-zero advantages) are rare,
    so the count first looks at how many there are (a fast pass with no temporaries): none or
    all need no segment sums, a few are located and binned by their segment's offsets.
    """
    hits = int(np.count_nonzero(flags))
    if hits == 0:
        return np.zeros(offsets.size - 1, dtype=np.int64)
    if hits == flags.size:
        return np.diff(offsets).astype(np.int64, copy=False)
    if hits <= flags.size // 32:
        positions = np.flatnonzero(flags)  # [hits]
        return np.diff(np.searchsorted(positions, offsets)).astype(np.int64, copy=False)
    # Summing the flags as int8 into int32 is about twice as fast as bool into int64; only an
    # input of 2**31 tokens or more could overflow int32, and it takes int64.
    accumulate = np.int32 if flags.size < 2**31 else np.int64
    return segment_sum_numpy(flags.view(np.int8), offsets, accumulate).astype(np.int64, copy=False)


def segment_chunks(offsets: np.ndarray, chunk_tokens: int) -> list[tuple[int, int]]:
    """Cut segments into consecutive runs ``[first, last)`` of about ``chunk_tokens`` tokens each.

    A run ends on a segment boundary, so a run holds whole segments; one segment longer than
    ``chunk_tokens`` is a run of its own. Empty input gives one empty run.
    """
    n_seqs = offsets.size - 1
    if n_seqs <= 0:
        return [(0, 0)]
    if int(offsets[-1]) <= chunk_tokens:  # a small step: one run (what the cuts below give, without them)
        return [(0, n_seqs)]
    targets = np.arange(chunk_tokens, int(offsets[-1]), chunk_tokens)
    cuts = np.searchsorted(offsets, targets, side="left")  # first segment starting at or after each target
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n_seqs), [n_seqs]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def expand_to_tokens(per_segment: np.ndarray, offsets: np.ndarray, n_tokens: int) -> np.ndarray:
    """Repeat each segment's value over its tokens: ``[n_seqs] -> [n_tokens]``."""
    out = np.repeat(per_segment, np.diff(offsets))
    assert out.size == n_tokens
    return out


def group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of per-row ``values`` within each group id in ``[0, n_groups)``: ``[n_rows] -> [n_groups]``.

    Each group's sum runs over its rows in row order, in the dtype of ``values`` (float64 sums,
    int64 counts).
    """
    if values.dtype.kind in "iub":
        out = np.zeros(n_groups, dtype=np.int64)
        np.add.at(out, group, values)
        return out
    # bincount adds each weight to its bin in row order, in float64
    return np.bincount(group, weights=values, minlength=n_groups)[:n_groups].astype(values.dtype, copy=False)


def run_ids(keys: np.ndarray) -> np.ndarray:
    """Index of the run of equal consecutive values each element belongs to: ``[n] -> [n]``."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts_run = np.ones(keys.size, dtype=np.int64)  # [n]
    starts_run[1:] = keys[1:] != keys[:-1]
    return np.cumsum(starts_run) - 1


# ---- the order of a float64 sum -----------------------------------------------------------------
_LANES = 4  # doubles per vector register in torch's CPU sum kernel (AVX2 and AVX512 builds alike)
_ILP = 4  # vector accumulators per lane group
_LEVELS = 4  # cascade levels


def ordered_sum(values: np.ndarray) -> float:
    """The sum of a float64 vector, added in the order torch's CPU sum kernel adds it (one thread).

    The summaries were computed with ``torch.sum`` before the core moved to numpy; numpy's pairwise
    order gives sums that differ in the last bit, so the summaries keep torch's order
    (``aten/src/ATen/native/cpu/SumKernel.cpp``: ``_LANES`` x ``_ILP`` accumulators over
    consecutive elements, cascaded into ``_LEVELS`` levels every ``2**level_power`` steps; the
    tail and the lanes are added last, in order). Both orders are equally accurate; this one keeps
    every number aggscope reported before.

    Args:
        values: ``[n]`` float64 (others are converted).
    """
    return float(ordered_sums(np.asarray(values, dtype=np.float64).reshape(1, -1))[0])


def ordered_sums(rows: np.ndarray) -> np.ndarray:
    """``ordered_sum`` of every row of a matrix at once: ``[k, n] -> [k]`` float64.

    Each row is added with exactly the additions ``ordered_sum`` makes on it alone (the same
    elementwise IEEE additions, done on all rows side by side), so each result equals that row's
    ``ordered_sum`` bit for bit; the Python overhead of the cascade is paid once for all ``k`` rows.

    Args:
        rows: ``[k, n]`` float64 (others are converted).
    """
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    k, n = rows.shape
    if n < _LANES:
        return 0.0 + _row_sum(rows.reshape(k, n, 1))[:, 0]
    n_vectors = n // _LANES
    lanes = _row_sum(rows[:, : n_vectors * _LANES].reshape(k, n_vectors, _LANES))  # [k, _LANES]
    total = np.zeros(k)
    with np.errstate(invalid="ignore", over="ignore"):  # silent, as ordered_sum's float additions are
        for column in range(n_vectors * _LANES, n):  # the tail, in order
            total += rows[:, column]
        for lane in range(_LANES):
            total += lanes[:, lane]
    return 0.0 + total


def _row_sum(units: np.ndarray) -> np.ndarray:
    """torch's ``row_sum`` on each of ``k`` inputs: ``[k, m, width]`` -> ``[k, width]``, ``_ILP`` interleaved accumulators."""
    k, m, width = units.shape
    n_rows = m // _ILP
    partial = _multi_row_sum(units[:, : n_rows * _ILP].reshape(k, n_rows, _ILP, width))  # [k, _ILP, width]
    for row in range(n_rows * _ILP, m):
        partial[:, 0] += units[:, row]
    for accumulator in range(1, _ILP):
        partial[:, 0] += partial[:, accumulator]
    return partial[:, 0]


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """torch's ``multi_row_sum`` on each of ``k`` inputs: ``[k, size, _ILP, width]`` -> ``[k, _ILP, width]``
    by a cascade of levels."""
    k, size = rows.shape[:2]
    level_power = max(4, (size - 1).bit_length() // _LEVELS if size > 1 else 0)  # CeilLog2(size) / levels
    step = 1 << level_power
    n_blocks = size // step
    acc = np.zeros((_LEVELS, k, *rows.shape[2:]))  # [_LEVELS, k, _ILP, width]
    if n_blocks:
        blocks = rows[:, : n_blocks * step].reshape(k, n_blocks, step, *rows.shape[2:])
        block_sums = 0.0 + blocks[:, :, 0]  # [k, n_blocks, _ILP, width], each block added one row at a time
        for j in range(1, step):
            block_sums += blocks[:, :, j]
        mask = step - 1
        for block in range(n_blocks):
            acc[0] = block_sums[:, block]
            done = (block + 1) * step
            for level in range(1, _LEVELS):
                acc[level] += acc[level - 1]
                acc[level - 1] = 0.0
                if done & (mask << (level * level_power)):
                    break
    for row in range(n_blocks * step, size):
        acc[0] += rows[:, row]
    for level in range(1, _LEVELS):
        acc[0] += acc[level]
    return acc[0]


# ---- sums of rows of different lengths, in one ``ordered_sums`` ---------------------------------------
# Every accumulator of the cascade starts at +0.0 and so never holds -0.0: adding +0.0 anywhere in it
# changes no sum. A row of ``n`` values then has the same ``ordered_sum`` as a longer row holding them
# at ``padded_positions`` and +0.0 elsewhere, where each value lands in the accumulator, and in the
# order, that it is added in on its own. Below ``_ROWS_PER_BLOCK`` rows of vectors (about 200 values),
# where the cascade has no level above its first, that longer row exists for every ``n``.
_ROWS_PER_BLOCK = 1 << 4  # rows of ``_ILP`` vectors per block of the cascade's first level (its least ``step``)


def _chain_rows(n: int) -> int:
    """Rows of accumulator 0 a row of ``n`` values fills: its ``_ILP``-vector rows, then its leftover vectors."""
    n_vectors = n // _LANES
    n_rows = n_vectors // _ILP
    return n_rows + (n_vectors - n_rows * _ILP)


def padded_width(lengths: Sequence[int]) -> int | None:
    """The width of rows on which each of ``lengths`` values keeps its ``ordered_sum`` (placed at
    ``padded_positions``, +0.0 elsewhere), or None for rows too long for one (then sum each length on its own)."""
    rows = max((_chain_rows(int(n)) for n in lengths), default=0)
    if rows >= _ROWS_PER_BLOCK:
        return None
    return rows * _ILP * _LANES + _LANES - 1  # whole rows of vectors, then the longest tail


@functools.lru_cache(maxsize=1024)
def padded_positions(n: int, width: int) -> np.ndarray:
    """``[n]`` where each of ``n`` values goes in a row of ``width`` (``padded_width``) so that the row's
    ``ordered_sum`` is theirs; increasing, read-only."""
    n_vectors = n // _LANES
    n_rows = n_vectors // _ILP
    rows = (width - (_LANES - 1)) // (_ILP * _LANES)
    index = np.arange(n, dtype=np.int64)
    vector, lane = index // _LANES, index % _LANES
    leftover = vector - n_rows * _ILP  # >= 0: a vector after the last whole row, added to accumulator 0
    positions = np.where(leftover >= 0, (n_rows + leftover) * _ILP * _LANES + lane, index)
    tail = index >= n_vectors * _LANES
    positions = np.where(tail, rows * _ILP * _LANES + (index - n_vectors * _LANES), positions)
    positions.setflags(write=False)
    return positions
