"""Checks a trainer runs on the batch it is about to split, before any gradient is computed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aggscope.core.batch import is_tensor
from aggscope.errors import AggscopeError


def assert_prompts_intact(uids: Any, mini_batch_boundaries: int | Sequence[Any]) -> None:
    """Raise if a mini-batch boundary cuts a prompt group (its rows would land in two optimizer steps).

    Args:
        uids: ``[n_rows]`` prompt-group ids in the order the trainer splits the batch (a list,
            array or tensor of strings or integers).
        mini_batch_boundaries: the mini-batch size in rows (an int), the rows where mini-batches
            start or end (ints), or ``(start, end)`` row ranges as SkyRL's
            ``policy_mini_batch_boundaries``.

    Raises:
        AggscopeError: naming the first cut prompt, the rows on either side and how many prompts
            are cut in all.
    """
    values = uids.detach().cpu().tolist() if is_tensor(uids) else list(np.asarray(uids, dtype=object).reshape(-1))
    n_rows = len(values)
    cuts = _cut_points(mini_batch_boundaries, n_rows)
    mini_batch = np.searchsorted(cuts, np.arange(n_rows), side="right")  # [n_rows]
    labels, group = np.unique(np.asarray([str(v) for v in values], dtype=object), return_inverse=True)
    group = group.reshape(-1)
    first = np.full(labels.size, np.iinfo(np.int64).max)
    last = np.full(labels.size, -1)
    np.minimum.at(first, group, mini_batch)
    np.maximum.at(last, group, mini_batch)
    cut_groups = np.flatnonzero(first != last)
    if cut_groups.size == 0:
        return
    rows_of_cut = np.flatnonzero(np.isin(group, cut_groups))
    culprit = int(group[rows_of_cut[0]])  # the cut prompt that comes first in the batch
    rows = np.flatnonzero(group == culprit)
    where = ", ".join(f"{_ranges(rows[mini_batch[rows] == mb])} in mini-batch {mb}" for mb in np.unique(mini_batch[rows]))
    others = f"; {cut_groups.size} prompts are cut in all" if cut_groups.size > 1 else ""
    raise AggscopeError(
        f"prompt {labels[culprit]!r} is cut by a mini-batch boundary ({where}){others}: split on prompt boundaries "
        "or make the mini-batch size a multiple of the group size"
    )


def _cut_points(boundaries: Any, n_rows: int) -> np.ndarray:
    """Sorted row indices where a new mini-batch starts (0 and n_rows left out)."""
    if isinstance(boundaries, (int, np.integer)) and not isinstance(boundaries, bool):
        if boundaries < 1:
            raise AggscopeError(f"assert_prompts_intact: the mini-batch size must be at least 1, got {boundaries}")
        return np.arange(int(boundaries), n_rows, int(boundaries))
    try:
        flat = np.asarray(list(boundaries), dtype=np.int64).reshape(-1)  # ints, or (start, end) pairs
    except (TypeError, ValueError):
        raise AggscopeError(
            "assert_prompts_intact: mini_batch_boundaries must be a size, row indices, or (start, end) pairs"
        ) from None
    if ((flat < 0) | (flat > n_rows)).any():
        raise AggscopeError(f"assert_prompts_intact: a boundary lies outside the batch's {n_rows} rows: {flat.tolist()}")
    return np.unique(flat[(flat > 0) & (flat < n_rows)])


def _ranges(rows: np.ndarray) -> str:
    """``row 6``, ``rows 6-7`` for consecutive rows, else a short list."""
    if rows.size == 1:
        return f"row {rows[0]}"
    if rows[-1] - rows[0] == rows.size - 1:
        return f"rows {rows[0]}-{rows[-1]}"
    shown = ", ".join(map(str, rows[:4].tolist()))
    return f"rows {shown}" + (", ..." if rows.size > 4 else "")
