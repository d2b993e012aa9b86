"""Per-row and per-group numpy views of one step and its split, shared by every per-step check.

``Rows`` holds the per-row token counts and where each row lands in the split; ``Groups`` the
per-prompt quantities (sizes, runs in trainer order, zero-variance groups, reward means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggscope.core.batch import StepBatch
from aggscope.core.segments import run_ids
from aggscope.core.split import Split

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

    @classmethod
    def of(cls, batch: StepBatch, split: Split) -> Rows:
        stats = batch.stats

        return cls(
            batch=batch,
            loss=stats.loss_tokens.astype(np.int64),
            zero_adv=stats.zero_adv_tokens.astype(np.int64),
            nonfinite_adv=stats.nonfinite_adv_tokens.astype(np.int64),
            masked_nonzero=stats.masked_nonzero_adv_tokens.astype(np.int64),
            adv_abs=stats.adv_abs_sum.astype(np.float64),
            order=split.order,
            position=split.position,
            mini_batch=split.mini_batch,
            rank=split.rank,
            micro_batch=split.micro_batch,
            rank_unit=split.rank_unit,
            micro_unit=split.micro_unit,
            n_mini_batches=split.n_mini_batches,
        )

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

    @classmethod
    def of(cls, batch: StepBatch, rows: Rows) -> Groups:
        assert batch.group_ids is not None and batch.uid_labels is not None
        code = batch.group_ids.astype(np.int64)
        n_groups = len(batch.uid_labels)
        size = np.bincount(code, minlength=n_groups)
        rows_sorted = np.argsort(code, kind="stable")
        starts = np.concatenate([[0], np.cumsum(size)])
        first_position = np.full(n_groups, rows.n, dtype=np.int64)
        np.minimum.at(first_position, code, rows.position)
        last_position = np.full(n_groups, -1, dtype=np.int64)
        np.maximum.at(last_position, code, rows.position)
        code_by_position = code[rows.order]
        run_of_position = run_ids(code_by_position)
        run_starts = np.ones(rows.n, dtype=bool)
        run_starts[1:] = run_of_position[1:] != run_of_position[:-1]
        runs = np.bincount(code_by_position[run_starts], minlength=n_groups)

        nonzero_adv_tokens = np.bincount(code, weights=rows.loss - rows.zero_adv, minlength=n_groups)  # NaN counts as non-zero
        all_adv_zero = nonzero_adv_tokens == 0
        reward_mean = np.full(n_groups, np.nan)
        at_mean = np.zeros(rows.n, dtype=bool)
        equal_rewards = all_adv_zero
        if batch.rewards is not None:
            rewards = batch.rewards.astype(np.float64)
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
        present = size[size > 0]
        counts = np.bincount(present)
        common_size = int(np.flatnonzero(counts == counts.max())[-1]) if present.size else 0
        return cls(
            code=code,
            labels=batch.uid_labels,
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
            common_size=common_size,
        )


def host_float64(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else values.astype(np.float64)
