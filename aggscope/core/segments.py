"""Reductions over ragged segments of a flat array (one segment per sequence).

Notation: a flat token array of length ``n_tokens`` is cut into ``n_seqs`` contiguous segments by
``offsets`` (``[n_seqs + 1]``, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == n_tokens``).
Every function here is vectorised: no Python loop over segments or tokens.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def segment_sum(values: torch.Tensor, offsets: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sum of ``values`` over each segment, accumulated in ``dtype``.

    Args:
        values: ``[n_tokens]`` numbers or booleans.
        offsets: ``[n_seqs + 1]`` int64 segment boundaries.
        dtype: accumulation and result dtype (float64 for sums, int64 for counts).

    Returns:
        ``[n_seqs]`` tensor of ``dtype`` on the device of ``values``; empty segments sum to 0.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(_segment_sum_numpy(values.numpy(), offsets.numpy(), dtype))
    return _segment_sum_torch(values, offsets, dtype)


def _segment_sum_torch(values: torch.Tensor, offsets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The same in torch on any device (used for GPU tensors, so results stay on the device)."""
    n_seqs = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]  # [n_seqs]
    segment_of_token = torch.repeat_interleave(torch.arange(n_seqs, device=values.device), lengths)  # [n_tokens]
    out = torch.zeros(n_seqs, dtype=dtype, device=values.device)
    return out.index_add_(0, segment_of_token, values.to(dtype))


def _segment_sum_numpy(values: np.ndarray, offsets: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    return segment_sum_numpy(values, offsets, np.float64 if dtype.is_floating_point else np.int64)


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
    targets = np.arange(chunk_tokens, int(offsets[-1]), chunk_tokens)
    cuts = np.searchsorted(offsets, targets, side="left")  # first segment starting at or after each target
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n_seqs), [n_seqs]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def expand_to_tokens(per_segment: torch.Tensor, offsets: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Repeat each segment's value over its tokens: ``[n_seqs] -> [n_tokens]``."""
    lengths = offsets[1:] - offsets[:-1]  # [n_seqs]
    if per_segment.device.type == "cpu" and per_segment.dtype != torch.bfloat16 and not per_segment.requires_grad:
        # numpy's repeat is about 30x faster than torch.repeat_interleave on the CPU.
        return torch.from_numpy(np.repeat(per_segment.numpy(), lengths.numpy()))
    return torch.repeat_interleave(per_segment, lengths, output_size=n_tokens)


def group_sum(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of per-row ``values`` within each group id in ``[0, n_groups)``: ``[n_rows] -> [n_groups]``."""
    out = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    return out.index_add_(0, group, values)


def run_ids(keys: torch.Tensor) -> torch.Tensor:
    """Index of the run of equal consecutive values each element belongs to: ``[n] -> [n]``."""
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=keys.device)
    starts_run = torch.ones_like(keys, dtype=torch.int64)  # [n]
    starts_run[1:] = (keys[1:] != keys[:-1]).to(torch.int64)
    return torch.cumsum(starts_run, 0) - 1
