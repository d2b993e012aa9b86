"""How a trainer splits one step: order, mini-batches, data-parallel rank shards, micro-batches.

Rules (from the reference sheet):

- Rows are taken in the trainer's order: ``logged`` (input order), ``grouped`` (each uid's rows
  made contiguous, groups in order of first appearance) or ``shuffle``
  (``numpy.random.default_rng([seed, step]).permutation(n_rows)``).
- Mini-batches are contiguous slices of that order: ``mini_batch_size`` sequences, or
  ``mini_batch_prompts`` runs of equal consecutive uids. A trailing short mini-batch is kept.
- Each mini-batch is cut into ``dp_size`` contiguous rank shards of as-equal-as-possible size (the
  first ``N_b mod D`` shards get one extra row), each shard into micro-batches of
  ``micro_batch_size`` sequences (the last may be shorter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from aggscope.core.segments import run_ids
from aggscope.errors import AggscopeError

ORDERS = ("logged", "grouped", "shuffle")
# Sizes above this cannot be a real trainer's (a step of 2^31 sequences does not fit in memory) and
# would overflow the int64 arithmetic of the split (mini-batch x rank ids); seeds stay within int64.
MAX_SIZE = 2**31 - 1
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Layout:
    """The trainer configuration that decides how a step is split.

    Attributes:
        mini_batch_size: sequences per optimizer step (None: the whole step is one mini-batch).
        mini_batch_prompts: the same counted in prompt runs, as SkyRL counts it.
        micro_batch_size: sequences per micro-batch per rank (None: the whole rank shard).
        dp_size: data-parallel ranks.
        max_seq_len: the constant horizon H of ``seq_mean_token_sum_norm``.
        order: ``logged``, ``grouped`` or ``shuffle``.
        seed: seed of ``shuffle``.
    """

    mini_batch_size: int | None = None
    mini_batch_prompts: int | None = None
    micro_batch_size: int | None = None
    dp_size: int = 1
    max_seq_len: int | None = None
    order: str = "logged"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("mini_batch_size", "mini_batch_prompts", "micro_batch_size", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and (not _whole(value) or value < 1):
                raise AggscopeError(f"layout: {_flag(name)} must be a whole number of at least 1, got {value!r}")
            if value is not None and value > MAX_SIZE:
                raise AggscopeError(f"layout: {_flag(name)} must be at most {MAX_SIZE:,}, got {value!r}")
        if not _whole(self.dp_size) or self.dp_size < 1:
            raise AggscopeError(f"layout: --dp-size must be a whole number of at least 1, got {self.dp_size!r}")
        if self.dp_size > MAX_SIZE:
            raise AggscopeError(f"layout: --dp-size must be at most {MAX_SIZE:,}, got {self.dp_size!r}")
        if self.mini_batch_size is not None and self.mini_batch_prompts is not None:
            raise AggscopeError("layout: give --mini-batch-size or --mini-batch-prompts, not both")
        if self.order not in ORDERS:
            raise AggscopeError(f"layout: unknown order {self.order!r}; valid orders: {', '.join(ORDERS)} (--order)")
        if not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise AggscopeError(f"layout: --seed must be a whole number from 0 to {MAX_SEED:,}, got {self.seed!r}")

    @property
    def needs_groups(self) -> bool:
        """True when the split itself needs uids (grouped order or mini-batches counted in prompts)."""
        return self.order == "grouped" or self.mini_batch_prompts is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> Layout:
        """A copy with some fields changed (validated again)."""
        return Layout(**{**self.to_dict(), **changes})


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Split:
    """Where every row of one step lands. All tensors are ``[n_seqs]`` int64, indexed by seq_index.

    Attributes:
        order: ``order[p]`` is the seq_index of the row at trainer position ``p``.
        position: the trainer position of each row (the inverse of ``order``).
        mini_batch: the mini-batch of each row, 0-based in trainer order.
        rank: the data-parallel rank shard of each row within its mini-batch.
        micro_batch: the micro-batch of each row within its rank shard.
        rank_unit: a step-wide id of the (mini-batch, rank) shard.
        micro_unit: a step-wide id of the (mini-batch, rank, micro-batch) unit.
        n_mini_batches: number of mini-batches.
    """

    order: torch.Tensor
    position: torch.Tensor
    mini_batch: torch.Tensor
    rank: torch.Tensor
    micro_batch: torch.Tensor
    rank_unit: torch.Tensor
    micro_unit: torch.Tensor
    n_mini_batches: int

    @property
    def n_micro_units(self) -> int:
        return int(self.micro_unit.max()) + 1 if self.micro_unit.numel() else 0


def trainer_order(n_rows: int, group_ids: torch.Tensor | None, layout: Layout, step: int, device: torch.device) -> torch.Tensor:
    """The seq_index at each trainer position: ``[n_rows]`` int64."""
    if layout.order == "logged":
        return torch.arange(n_rows, device=device)
    if layout.order == "grouped":
        if group_ids is None:
            raise AggscopeError("layout: --order grouped needs a uid column")
        # Codes are numbered by first appearance, so a stable sort by code is exactly "groups in
        # order of first appearance, rows of a group in logged order".
        return torch.sort(group_ids, stable=True).indices
    if step < 0:
        raise AggscopeError(f"layout: --order shuffle needs non-negative step numbers, got step {step}")
    permutation = np.random.default_rng([layout.seed, step]).permutation(n_rows)
    return torch.from_numpy(permutation.astype(np.int64)).to(device)


def split_step(n_rows: int, group_ids: torch.Tensor | None, layout: Layout, step: int, device: torch.device) -> Split:
    """Assign every row of a step to its mini-batch, rank shard and micro-batch.

    Args:
        n_rows: sequences in the step.
        group_ids: ``[n_rows]`` uid codes in input order, or None.
        layout: the trainer configuration.
        step: the step number (seeds ``shuffle``).
        device: where the result tensors live.
    """
    if layout.mini_batch_prompts is not None and group_ids is None:
        raise AggscopeError("layout: --mini-batch-prompts needs a uid column to count prompts")
    order = trainer_order(n_rows, group_ids, layout, step, device)  # [n] seq_index by position
    positions = torch.arange(n_rows, device=device)  # [n]
    if layout.mini_batch_prompts is not None:
        assert group_ids is not None
        mini_batch_at = run_ids(group_ids[order]) // layout.mini_batch_prompts  # [n] by position
    elif layout.mini_batch_size is not None:
        mini_batch_at = positions // layout.mini_batch_size
    else:
        mini_batch_at = torch.zeros(n_rows, dtype=torch.int64, device=device)
    n_mini_batches = int(mini_batch_at[-1]) + 1 if n_rows else 0

    rows_per_mini_batch = torch.bincount(mini_batch_at, minlength=n_mini_batches)  # [n_mb]
    mini_batch_start = torch.cumsum(rows_per_mini_batch, 0) - rows_per_mini_batch  # [n_mb]
    in_mini_batch = positions - mini_batch_start[mini_batch_at]  # [n] position inside the mini-batch
    n_b = rows_per_mini_batch[mini_batch_at]  # [n]
    dp = layout.dp_size
    small = n_b // dp  # rows of the short shards
    n_big = n_b % dp  # the first N_b mod D shards hold small + 1 rows
    big_rows = n_big * (small + 1)
    rank_at = torch.where(
        in_mini_batch < big_rows,
        in_mini_batch // (small + 1),
        n_big + (in_mini_batch - big_rows) // small.clamp(min=1),
    )
    shard_start = torch.where(rank_at < n_big, rank_at * (small + 1), big_rows + (rank_at - n_big) * small)
    if layout.micro_batch_size is not None:
        micro_at = (in_mini_batch - shard_start) // layout.micro_batch_size
    else:
        micro_at = torch.zeros(n_rows, dtype=torch.int64, device=device)
    rank_unit_at = mini_batch_at * dp + rank_at
    # Units are contiguous in trainer order, so a new id starts wherever the unit changes.
    micro_key = torch.stack([mini_batch_at, rank_at, micro_at], dim=1)  # [n, 3]
    changes = torch.ones(n_rows, dtype=torch.int64, device=device)
    if n_rows > 1:
        changes[1:] = (micro_key[1:] != micro_key[:-1]).any(dim=1).to(torch.int64)
    micro_unit_at = torch.cumsum(changes, 0) - 1

    def by_row(at_position: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(at_position)
        out[order] = at_position
        return out

    return Split(
        order=order,
        position=by_row(positions),
        mini_batch=by_row(mini_batch_at),
        rank=by_row(rank_at),
        micro_batch=by_row(micro_at),
        rank_unit=by_row(rank_unit_at),
        micro_unit=by_row(micro_unit_at),
        n_mini_batches=n_mini_batches,
    )
