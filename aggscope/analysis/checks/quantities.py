"""Per-row and per-group numpy views of one step and its split, shared by every per-step check.

``Rows`` holds the per-row token counts and where each row lands in the split; ``Groups`` the
per-prompt quantities (sizes, runs in trainer order, zero-variance groups, reward means).
``RunQuantities`` computes both for a run of steps at once, stacked, and hands them out per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggscope.core.batch import StepBatch
from aggscope.core.segments import run_ids
from aggscope.core.split import Split
from aggscope.core.stack import Stack

REWARD_MEAN_RTOL = 1e-9


@dataclass(frozen=True, eq=False)
class Rows:
    """Per-row numpy views of one step and its split (all ``[n]``, by seq_index unless noted)."""

    batch: StepBatch
    loss: np.ndarray
    zero_adv: np.ndarray
    nonfinite_adv: np.ndarray
    masked_nonzero: np.ndarray
    adv_abs: np.ndarray
    order: np.ndarray  # [n] seq_index at each trainer position
    position: np.ndarray
    mini_batch: np.ndarray
    rank: np.ndarray
    micro_batch: np.ndarray
    rank_unit: np.ndarray
    micro_unit: np.ndarray
    n_mini_batches: int

    @property
    def n(self) -> int:
        return int(self.loss.size)


@dataclass(frozen=True, eq=False)
class Groups:
    """Per-group quantities of one step (``[G]`` arrays) and each group's rows."""

    code: np.ndarray  # [n] group of each row
    labels: tuple[str, ...]
    size: np.ndarray
    rows_sorted: np.ndarray  # [n] rows grouped by group, ascending within a group
    starts: np.ndarray  # [G + 1] group g owns rows_sorted[starts[g]:starts[g+1]]
    first_position: np.ndarray
    last_position: np.ndarray
    runs: np.ndarray  # runs of the group in trainer order
    run_of_position: np.ndarray  # [n] run index of each trainer position
    zero_variance: np.ndarray  # bool
    reward_mean: np.ndarray  # mean of finite rewards, NaN where none
    at_mean: np.ndarray  # [n] bool: the row's finite reward equals its group's mean
    common_size: int

    def rows(self, group: int) -> np.ndarray:
        return self.rows_sorted[self.starts[group] : self.starts[group + 1]]


@dataclass(frozen=True, eq=False)
class RunQuantities:
    """The per-row and per-group quantities of a run of consecutive steps, computed on the steps
    stacked (``aggscope.core.stack``) and handed out step by step (``rows``, ``groups``): each
    step's are those of the step alone, bit for bit, since no quantity here crosses a step.

    Attributes:
        stack: the steps stacked.
        loss, zero_adv, nonfinite_adv, masked_nonzero: ``[R]`` int64 token counts of each row.
        adv_abs: ``[R]`` float64 sum of ``|A|`` over each row's finite loss tokens.
        groups: the run-wide groups (codes ``stack.group_ids``), or None without uids.
        size_counts: ``[S, max size + 1]`` prompts of each group size in each step (None without uids).
    """

    stack: Stack
    loss: np.ndarray
    zero_adv: np.ndarray
    nonfinite_adv: np.ndarray
    masked_nonzero: np.ndarray
    adv_abs: np.ndarray
    groups: Groups | None
    size_counts: np.ndarray | None

    @classmethod
    def of(cls, batches: Sequence[StepBatch], stack: Stack) -> RunQuantities:
        """The run's quantities; every step must have uids or none, rewards or none (``uniform``)."""
        stats = stack.stats
        loss = stats.loss_tokens.astype(np.int64)
        zero_adv = stats.zero_adv_tokens.astype(np.int64)
        groups = size_counts = None
        if stack.group_ids is not None:
            groups, size_counts = _run_groups(batches, stack, loss, zero_adv)
        return cls(
            stack=stack,
            loss=loss,
            zero_adv=zero_adv,
            nonfinite_adv=stats.nonfinite_adv_tokens.astype(np.int64),
            masked_nonzero=stats.masked_nonzero_adv_tokens.astype(np.int64),
            adv_abs=stats.adv_abs_sum.astype(np.float64),
            groups=groups,
            size_counts=size_counts,
        )

    @staticmethod
    def uniform(batches: Sequence[StepBatch]) -> bool:
        """Whether the steps can be stacked here: all with uids or none, all with rewards or none."""
        return len({(batch.group_ids is None, batch.rewards is None) for batch in batches}) <= 1

    def rows(self, index: int, batch: StepBatch, split: Split) -> Rows:
        """Step ``index``'s (0-based in the run) rows, ``batch`` split as ``split``."""
        sl = self.stack.rows(index)
        return Rows(
            batch=batch,
            loss=self.loss[sl],
            zero_adv=self.zero_adv[sl],
            nonfinite_adv=self.nonfinite_adv[sl],
            masked_nonzero=self.masked_nonzero[sl],
            adv_abs=self.adv_abs[sl],
            order=split.order,
            position=split.position,
            mini_batch=split.mini_batch,
            rank=split.rank,
            micro_batch=split.micro_batch,
            rank_unit=split.rank_unit,
            micro_unit=split.micro_unit,
            n_mini_batches=split.n_mini_batches,
        )

    def group_sizes(self, index: int) -> dict[int, int]:
        """``{group size: prompts}`` of step ``index`` (its groups with rows)."""
        assert self.size_counts is not None
        row = self.size_counts[index]
        return {int(size): int(row[size]) for size in np.flatnonzero(row).tolist()}

    def step_groups(self, index: int, batch: StepBatch) -> Groups | None:
        """Step ``index``'s groups, numbered as its own uid codes (None without uids)."""
        run = self.groups
        if run is None or batch.uid_labels is None:
            return None
        stack = self.stack
        rows, groups = stack.rows(index), stack.groups(index)
        row_offset, group_offset = rows.start, groups.start
        assert self.size_counts is not None
        first_run = int(run.run_of_position[row_offset]) if rows.stop > rows.start else 0
        return Groups(
            code=run.code[rows] - group_offset,
            labels=batch.uid_labels,
            size=run.size[groups],
            rows_sorted=run.rows_sorted[rows] - row_offset,
            starts=run.starts[groups.start : groups.stop + 1] - row_offset,
            first_position=run.first_position[groups] - row_offset,
            last_position=run.last_position[groups] - row_offset,
            runs=run.runs[groups],
            run_of_position=run.run_of_position[rows] - first_run,
            zero_variance=run.zero_variance[groups],
            reward_mean=run.reward_mean[groups],
            at_mean=run.at_mean[rows],
            common_size=_common_size(self.size_counts[index]),
        )


def _common_size(counts: np.ndarray) -> int:
    """The group size most prompts of a step have (the largest such size on a tie; 0 without prompts)."""
    if not counts.any():
        return 0
    return int(np.flatnonzero(counts == counts.max())[-1])


def _run_groups(batches: Sequence[StepBatch], stack: Stack, loss: np.ndarray, zero_adv: np.ndarray) -> tuple[Groups, np.ndarray]:
    """The run-wide ``Groups`` (its ``common_size`` unused: 0) and ``[S, max size + 1]`` size counts."""
    assert stack.group_ids is not None and stack.group_bounds is not None
    code = stack.group_ids
    n_rows, n_groups = int(code.size), stack.n_groups
    order, position = stack.split.order, stack.split.position
    step_of_group = np.repeat(np.arange(stack.n_steps, dtype=np.int64), np.diff(stack.group_bounds))
    size = np.bincount(code, minlength=n_groups)
    rows_sorted = np.argsort(code, kind="stable")
    starts = np.concatenate([[0], np.cumsum(size)])
    # a group without rows: first position past its step's rows, last one before them (as for the step alone)
    first_position = stack.row_bounds[1:][step_of_group].copy()
    np.minimum.at(first_position, code, position)
    last_position = stack.row_bounds[:-1][step_of_group] - 1
    np.maximum.at(last_position, code, position)
    code_by_position = code[order]
    run_of_position = run_ids(code_by_position)  # a step's first row starts a run: codes of two steps differ
    run_starts = np.ones(n_rows, dtype=bool)
    run_starts[1:] = run_of_position[1:] != run_of_position[:-1]
    runs = np.bincount(code_by_position[run_starts], minlength=n_groups)

    nonzero_adv_tokens = np.bincount(code, weights=loss - zero_adv, minlength=n_groups)  # NaN counts as non-zero
    all_adv_zero = nonzero_adv_tokens == 0
    reward_mean = np.full(n_groups, np.nan)
    at_mean = np.zeros(n_rows, dtype=bool)
    equal_rewards = all_adv_zero
    if batches and batches[0].rewards is not None:
        rewards = np.concatenate([batch.rewards.astype(np.float64) for batch in batches if batch.rewards is not None])
        finite = np.isfinite(rewards)
        n_finite = np.bincount(code, weights=finite, minlength=n_groups)
        total = np.bincount(code, weights=np.where(finite, rewards, 0.0), minlength=n_groups)
        has_finite = n_finite > 0
        reward_mean = np.where(has_finite, total / np.maximum(n_finite, 1), np.nan)
        low = np.full(n_groups, np.inf)
        np.minimum.at(low, code[finite], rewards[finite])
        high = np.full(n_groups, -np.inf)
        np.maximum.at(high, code[finite], rewards[finite])
        # Finite rewards all exactly equal; a group without a finite reward falls back on its advantages.
        equal_rewards = np.where(has_finite, low == high, all_adv_zero)
        mean_of_row = reward_mean[code]
        with np.errstate(invalid="ignore"):
            at_mean = finite & (np.abs(rewards - mean_of_row) <= REWARD_MEAN_RTOL * np.maximum(1.0, np.abs(mean_of_row)))
    zero_variance = (size >= 2) & equal_rewards
    # prompts of each size in each step: the sizes of the groups with rows, counted step by step
    widest = int(size.max()) + 1 if size.size else 1
    present = size > 0
    size_counts = np.bincount(step_of_group[present] * widest + size[present], minlength=stack.n_steps * widest).reshape(
        stack.n_steps, widest
    )
    groups = Groups(
        code=code,
        labels=(),
        size=size,
        rows_sorted=rows_sorted,
        starts=starts,
        first_position=first_position,
        last_position=last_position,
        runs=runs,
        run_of_position=run_of_position,
        zero_variance=zero_variance,
        reward_mean=reward_mean,
        at_mean=at_mean,
        common_size=0,
    )
    return groups, size_counts


def host_float64(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else values.astype(np.float64)
