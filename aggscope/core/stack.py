"""Several steps stacked as one: their rows back to back, every id made run-wide.

Many small steps pay numpy's per-call cost once each; stacked, they pay it once for all. A quantity
that is a function of a row's own mini-batch, micro-batch, rank shard or prompt group alone (every
built-in mode but ``token_mean_generation``, every per-group check) computed on the stack is, row by
row, the quantity computed on the row's step alone: the ids of different steps never meet, and a
group's rows are added in the same order (``group_sum`` and ``bincount`` add in row order).

``Stack.of(batches, splits)`` builds the run-wide ids; ``rows(s)`` and ``groups(s)`` are the slices
of step ``s``'s rows and prompt groups in stacked arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggscope.core.batch import SequenceStats, StepBatch
from aggscope.core.segments import group_sum
from aggscope.core.split import Split


@dataclass(frozen=True, eq=False)
class Stack:
    """The steps of a run of consecutive batches, stacked.

    Attributes:
        row_bounds: ``[S + 1]`` step ``s`` owns stacked rows ``row_bounds[s]:row_bounds[s + 1]``.
        group_bounds: ``[S + 1]`` the same for prompt groups (codes ``group_ids`` takes), or None
            when a step has no uid.
        step_of_row: ``[R]`` the step (0-based in the run) of each stacked row.
        split: every step's split with run-wide ids: ``order`` and ``position`` index stacked rows,
            ``mini_batch``, ``rank_unit`` and ``micro_unit`` are offset past the earlier steps'
            (``rank`` and ``micro_batch`` stay within their shard).
        group_ids: ``[R]`` run-wide uid codes, or None.
        stats: the steps' ``SequenceStats`` back to back.
        mini_batch_bounds: ``[S + 1]`` step ``s`` owns run-wide mini-batches in this range.
    """

    row_bounds: np.ndarray
    group_bounds: np.ndarray | None
    step_of_row: np.ndarray
    split: Split
    group_ids: np.ndarray | None
    stats: SequenceStats
    mini_batch_bounds: np.ndarray

    @property
    def n_steps(self) -> int:
        return int(self.row_bounds.size) - 1

    @property
    def n_groups(self) -> int:
        return 0 if self.group_bounds is None else int(self.group_bounds[-1])

    def rows(self, step: int) -> slice:
        """Step ``step``'s stacked rows (0-based in the run)."""
        return slice(int(self.row_bounds[step]), int(self.row_bounds[step + 1]))

    def groups(self, step: int) -> slice:
        """Step ``step``'s run-wide group codes (0-based in the run); needs uids."""
        assert self.group_bounds is not None
        return slice(int(self.group_bounds[step]), int(self.group_bounds[step + 1]))

    @classmethod
    def of(cls, batches: Sequence[StepBatch], splits: Sequence[Split]) -> Stack:
        """The stack of ``batches``, each split as ``splits`` says (``split_batch``'s)."""
        rows = np.array([batch.n_sequences for batch in batches], dtype=np.int64)
        row_bounds = _bounds(rows)
        mini_batches = np.array([split.n_mini_batches for split in splits], dtype=np.int64)
        mini_batch_bounds = _bounds(mini_batches)
        # a step's rank-shard ids are below n_mini_batches * shards per mini-batch, its micro-unit ids below its unit count
        rank_units = np.array([int(split.rank_unit.max()) + 1 if split.rank_unit.size else 0 for split in splits])
        micro_units = np.array([split.n_micro_units for split in splits], dtype=np.int64)
        step_of_row = np.repeat(np.arange(len(batches), dtype=np.int64), rows)

        def run_wide(arrays: list[np.ndarray], offsets: np.ndarray) -> np.ndarray:
            if not arrays:
                return np.zeros(0, dtype=np.int64)
            return np.concatenate(arrays).astype(np.int64, copy=False) + offsets[step_of_row]

        split = Split(
            order=run_wide([s.order for s in splits], row_bounds[:-1]),
            position=run_wide([s.position for s in splits], row_bounds[:-1]),
            mini_batch=run_wide([s.mini_batch for s in splits], mini_batch_bounds[:-1]),
            rank=_joined([s.rank for s in splits]),
            micro_batch=_joined([s.micro_batch for s in splits]),
            rank_unit=run_wide([s.rank_unit for s in splits], _bounds(rank_units)[:-1]),
            micro_unit=run_wide([s.micro_unit for s in splits], _bounds(micro_units)[:-1]),
            n_mini_batches=int(mini_batch_bounds[-1]),
        )
        group_bounds = group_ids = None
        if all(batch.group_ids is not None for batch in batches):
            group_bounds = _bounds(np.array([batch.n_groups for batch in batches], dtype=np.int64))
            group_ids = run_wide([batch.group_ids for batch in batches if batch.group_ids is not None], group_bounds[:-1])
        return cls(
            row_bounds=row_bounds,
            group_bounds=group_bounds,
            step_of_row=step_of_row,
            split=split,
            group_ids=group_ids,
            stats=SequenceStats.concat([batch.stats for batch in batches]),
            mini_batch_bounds=mini_batch_bounds,
        )

    def per_step(self, values: np.ndarray) -> np.ndarray:
        """``[R] -> [S]``: the sum of per-row ``values`` over each step's rows (``group_sum``: int64
        counts, float sums in row order)."""
        return group_sum(values, self.step_of_row, self.n_steps)


def _bounds(counts: np.ndarray) -> np.ndarray:
    bounds = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    return bounds


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.zeros(0, dtype=np.int64)
