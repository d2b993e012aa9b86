"""How a trainer splits one step (a ``Layout``): order, mini-batches, data-parallel rank shards, micro-batches.

Rules (from the reference sheet):

- Rows are taken in the trainer's order: ``logged`` (input order), ``grouped`` (each uid's rows
  made contiguous, groups in order of first appearance), ``shuffle``
  (``numpy.random.default_rng([seed, step]).permutation(n_rows)``) or ``balanced`` (verl's
  ``balance_batch``: ``dp_size`` equal-size sets of balanced sequence length, set ``r`` first as
  rank ``r``'s shard; ``aggscope.core.partition``).
- Mini-batches are contiguous slices of that order: ``mini_batch_size`` sequences, or
  ``mini_batch_prompts`` runs of equal consecutive uids. A trailing short mini-batch is kept.
- Each mini-batch is cut into ``dp_size`` contiguous rank shards of as-equal-as-possible size (the
  first ``N_b mod D`` shards get one extra row), each shard into micro-batches of
  ``micro_batch_size`` sequences (the last may be shorter), or, with ``micro_batch_tokens``, into
  verl's token-budget micro-batches (``use_dynamic_bsz``): balanced sets of at most that many
  tokens, the same number on every rank, run in verl's order. The trainer order then lists each
  shard's rows micro-batch by micro-batch, so every micro-batch is a run of trainer positions.

Sequence lengths (prompt + response, as the trainer counts them) are needed by ``balanced`` and
``micro_batch_tokens``; the caller passes them (``aggscope.core.weights.split_batch`` uses the
row's tokens plus ``prompt_tokens``, since a dump seldom holds prompt lengths).

That is the ``canonical`` composition (mini-batches first). verl 0.9.1 composes the other way,
``ranks_first``: the whole step is cut into ``dp_size`` contiguous rank shards first (same sizing
rule), each shard into chunks of ``mini_batch_size / dp_size`` rows, and mini-batch ``b`` is the
``b``-th chunk of every shard (``verl/workers/engine_workers.py`` ``train_mini_batch``).

With ``rank_shuffle_seed`` (verl ``actor.shuffle``), each rank walks its shard in a new random order
every pass before it is cut into chunks: the order of a ``torch.utils.data.DataLoader(shuffle=True)``
whose ``torch.Generator`` is seeded ``rank_shuffle_seed + rank`` once per step and drawn again for
every pass (verl ``utils/tensordict_utils.py`` ``make_iterator``); ``pass_index`` selects the pass.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.core.layout import Layout
from aggscope.core.partition import balance_batch_order, token_budget_micro_batches
from aggscope.core.segments import run_ids
from aggscope.errors import AggscopeError


@dataclass(frozen=True)
class Split:
    """Where every row of one step lands. All arrays are ``[n_seqs]`` int64, indexed by seq_index.

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

    order: np.ndarray
    position: np.ndarray
    mini_batch: np.ndarray
    rank: np.ndarray
    micro_batch: np.ndarray
    rank_unit: np.ndarray
    micro_unit: np.ndarray
    n_mini_batches: int

    @property
    def n_micro_units(self) -> int:
        return int(self.micro_unit.max()) + 1 if self.micro_unit.size else 0


def trainer_order(
    n_rows: int, group_ids: np.ndarray | None, layout: Layout, step: int, seq_lengths: np.ndarray | None = None
) -> np.ndarray:
    """The seq_index at each trainer position: ``[n_rows]`` int64 (``seq_lengths``: see ``split_step``)."""
    if layout.order == "logged":
        return np.arange(n_rows, dtype=np.int64)
    if layout.order == "grouped":
        if group_ids is None:
            raise AggscopeError("layout: --order grouped needs a uid column")
        # Codes are numbered by first appearance, so a stable sort by code is exactly "groups in
        # order of first appearance, rows of a group in logged order".
        return np.argsort(group_ids, kind="stable").astype(np.int64, copy=False)
    if layout.order == "balanced":
        lengths = _need_lengths(seq_lengths, n_rows, "--order balanced")
        if n_rows % layout.dp_size:
            raise AggscopeError(
                f"layout: --order balanced (verl's balance_batch) needs the step's {n_rows} rows to be a multiple of "
                f"--dp-size {layout.dp_size}: verl pads the step with empty rows first, and the input must hold them"
            )
        if n_rows == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(balance_batch_order(lengths.tolist(), layout.dp_size), dtype=np.int64)
    if step < 0:
        raise AggscopeError(f"layout: --order shuffle needs non-negative step numbers, got step {step}")
    return np.random.default_rng([layout.seed, step]).permutation(n_rows).astype(np.int64)


def _keep(key: tuple[Any, ...], split: Split) -> None:
    """Keep ``split`` under ``key`` (its arrays made read-only), letting go of the oldest beyond ``_KEPT_SPLITS``."""
    for array in (
        split.order,
        split.position,
        split.mini_batch,
        split.rank,
        split.micro_batch,
        split.rank_unit,
        split.micro_unit,
    ):
        array.flags.writeable = False
    if len(_SPLITS) >= _KEPT_SPLITS:
        # the oldest; callers in other threads may evict at once (each dict call is atomic)
        with contextlib.suppress(RuntimeError, StopIteration):
            _SPLITS.pop(next(iter(_SPLITS)), None)
    _SPLITS[key] = split


# The last splits of small steps made (``split_step(..., shared=True)``), by everything they depend on: steps of one
# run mostly share one. At most ``_KEPT_SPLITS`` of at most ``_KEPT_SPLIT_ROWS`` rows (seven int64
# arrays, and the uids or lengths of a key where the layout reads them): at most about 8 MiB in all.
_SPLITS: dict[tuple[Any, ...], Split] = {}
_KEPT_SPLITS = 8
_KEPT_SPLIT_ROWS = 1 << 14


def _split_key(
    n_rows: int, group_ids: np.ndarray | None, layout: Layout, step: int, seq_lengths: np.ndarray | None, pass_index: int
) -> tuple[Any, ...]:
    """What a split depends on: the rows, and the uids, step or lengths only where the layout reads them."""
    uses_groups = layout.needs_groups
    return (
        layout,
        n_rows,
        pass_index,
        None if group_ids is None else (group_ids.tobytes() if uses_groups else True),
        step if layout.order == "shuffle" else None,
        None if seq_lengths is None or not layout.needs_lengths else np.asarray(seq_lengths, dtype=np.int64).tobytes(),
    )


def split_step(
    n_rows: int,
    group_ids: np.ndarray | None,
    layout: Layout,
    step: int,
    seq_lengths: np.ndarray | None = None,
    pass_index: int = 0,
    *,
    shared: bool = False,
) -> Split:
    """Assign every row of a step to its mini-batch, rank shard and micro-batch.

    Args:
        n_rows: sequences in the step.
        group_ids: ``[n_rows]`` uid codes in input order, or None.
        layout: the trainer configuration.
        step: the step number (seeds ``shuffle``).
        seq_lengths: ``[n_rows]`` sequence lengths (prompt + response tokens) in input order; needed
            when ``layout.needs_lengths``.
        pass_index: the pass (epoch) whose split to give, ``0 <= pass_index < layout.passes``; only
            ``rank_shuffle_seed`` makes the passes differ.
        shared: share the split with the steps of the same shape (``aggscope.core.weights.split_batch``
            does): a step's split is a function of what the layout reads of it (its rows; its uids,
            step number or lengths only where the layout uses them), so the last few splits of small
            steps are kept (``_SPLITS``) and given again, their arrays read-only. Without it, every
            call makes a split of its own, its arrays the caller's.
    """
    key = _split_key(n_rows, group_ids, layout, step, seq_lengths, pass_index) if shared and n_rows <= _KEPT_SPLIT_ROWS else None
    kept = None if key is None else _SPLITS.get(key)
    if kept is not None:
        return kept
    if layout.mini_batch_prompts is not None and group_ids is None:
        raise AggscopeError("layout: --mini-batch-prompts needs a uid column to count prompts")
    order = trainer_order(n_rows, group_ids, layout, step, seq_lengths)  # [n] seq_index by position
    positions = np.arange(n_rows, dtype=np.int64)  # [n]
    if layout.rank_shuffle_seed is not None:
        order = order[_rank_shuffled_positions(n_rows, layout, pass_index)]
    if layout.composition == "ranks_first":
        mini_batch_at, rank_at, micro_at = _ranks_first(positions, layout)
    else:
        mini_batch_at, rank_at, micro_at = _canonical(positions, group_ids, order, layout)
    if layout.micro_batch_tokens is not None and n_rows:
        lengths = _need_lengths(seq_lengths, n_rows, "--micro-batch-tokens")
        too_long = np.flatnonzero(lengths > layout.micro_batch_tokens)
        if too_long.size:
            row = int(too_long[0])
            raise AggscopeError(
                f"layout: row {row} has {int(lengths[row])} tokens (prompt + response), more than --micro-batch-tokens "
                f"{layout.micro_batch_tokens} (verl's ppo_max_token_len_per_gpu); verl refuses it: raise the budget to at "
                f"least {int(lengths.max())}"
            )
        regrouped, micro_at = _token_budget(mini_batch_at, rank_at, lengths[order], layout.micro_batch_tokens)
        order, mini_batch_at, rank_at = order[regrouped], mini_batch_at[regrouped], rank_at[regrouped]
    n_mini_batches = int(mini_batch_at.max()) + 1 if n_rows else 0
    rank_unit_at = mini_batch_at * layout.dp_size + rank_at
    # Every (mini-batch, rank, micro-batch) unit is a contiguous run of trainer positions (also
    # under ranks_first, where a mini-batch is not), so a new id starts wherever the unit changes.
    changes = np.ones(n_rows, dtype=np.int64)
    if n_rows > 1:
        changes[1:] = (mini_batch_at[1:] != mini_batch_at[:-1]) | (rank_at[1:] != rank_at[:-1]) | (micro_at[1:] != micro_at[:-1])
    micro_unit_at = np.cumsum(changes) - 1

    def by_row(at_position: np.ndarray) -> np.ndarray:
        out = np.empty_like(at_position)
        out[order] = at_position
        return out

    split = Split(
        order=order,
        position=by_row(positions),
        mini_batch=by_row(mini_batch_at),
        rank=by_row(rank_at),
        micro_batch=by_row(micro_at),
        rank_unit=by_row(rank_unit_at),
        micro_unit=by_row(micro_unit_at),
        n_mini_batches=n_mini_batches,
    )
    if key is not None:
        _keep(key, split)
    return split


def _rank_shuffled_positions(n_rows: int, layout: Layout, pass_index: int) -> np.ndarray:
    """``[n]`` the trainer position each rank walks at each place of its shard in pass ``pass_index``
    (verl ``actor.shuffle``): every rank's contiguous shard permuted by its own seeded draw."""
    if not 0 <= pass_index < layout.passes:
        raise AggscopeError(f"layout: pass {pass_index} of a layout with {layout.passes} passes")
    positions = np.arange(n_rows, dtype=np.int64)
    rank_at, shard_start = _shards(positions, np.full_like(positions, n_rows), layout.dp_size)
    shuffled = positions.copy()
    assert layout.rank_shuffle_seed is not None
    for rank in np.unique(rank_at).tolist():
        rows = np.flatnonzero(rank_at == rank)
        permutation = verl_shuffle_orders(rows.size, layout.rank_shuffle_seed + rank, layout.passes)[pass_index]
        shuffled[rows] = int(shard_start[rows[0]]) + permutation
    return shuffled


@functools.lru_cache(maxsize=64)
def verl_shuffle_orders(size: int, seed: int, passes: int) -> np.ndarray:
    """``[passes, size]`` the order a rank walks ``size`` rows in, pass by pass, as verl 0.9.1's
    ``make_iterator`` draws it with ``shuffle=True``: one ``torch.Generator`` seeded ``seed`` and a
    ``torch.utils.data.DataLoader`` over the rows iterated once per pass (each new iterator draws its
    base seed from the generator, then its ``RandomSampler`` a ``torch.randperm``). torch's own
    classes draw it, so it is the trainer's order wherever the trainer's torch draws as this one does."""
    import torch  # only a shuffled verl layout needs it
    from torch.utils.data import DataLoader

    generator = torch.Generator()
    generator.manual_seed(seed)
    # only the sampler's draws matter: the rows themselves are the dataset (verl's is torch.arange)
    rows: Any = range(size)
    loader: DataLoader[int] = DataLoader(rows, batch_size=max(size, 1), shuffle=True, generator=generator, collate_fn=list)
    orders = np.empty((passes, size), dtype=np.int64)
    for index in range(passes):
        orders[index] = [row for batch in loader for row in batch]
    orders.setflags(write=False)
    return orders


def _need_lengths(seq_lengths: np.ndarray | None, n_rows: int, option: str) -> np.ndarray:
    if seq_lengths is None or np.shape(seq_lengths) != (n_rows,):
        raise AggscopeError(f"layout: {option} needs every row's sequence length")
    return np.asarray(seq_lengths, dtype=np.int64)


def _token_budget(
    mini_batch_at: np.ndarray, rank_at: np.ndarray, lengths_at: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """verl's token-budget micro-batches of every (mini-batch, rank) shard.

    Args:
        mini_batch_at, rank_at: ``[n]`` mini-batch and rank of each trainer position.
        lengths_at: ``[n]`` sequence length of each trainer position.
        budget: tokens per micro-batch per rank.

    Returns:
        ``[n]`` the trainer positions regrouped (each shard's rows micro-batch by micro-batch, in the
        order verl runs them) and ``[n]`` the micro-batch of each regrouped position.
    """
    regrouped = np.empty_like(mini_batch_at)
    micro_at = np.empty_like(mini_batch_at)
    n_ranks = int(rank_at.max()) + 1
    # shards in trainer order: (mini-batch, rank) blocks, each a contiguous run of positions
    shard_key = mini_batch_at * n_ranks + rank_at
    by_shard = np.argsort(shard_key, kind="stable")
    keys, starts = np.unique(shard_key[by_shard], return_index=True)
    bounds = [*starts.tolist(), by_shard.size]
    shards = {int(key): by_shard[bounds[i] : bounds[i + 1]] for i, key in enumerate(keys.tolist())}
    cursor = 0
    for mini_batch in range(int(mini_batch_at.max()) + 1):
        ranks = [shards[key] for key in range(mini_batch * n_ranks, (mini_batch + 1) * n_ranks) if key in shards]
        micros = token_budget_micro_batches([lengths_at[rows].tolist() for rows in ranks], budget)
        for rows, rank_micros in zip(ranks, micros, strict=True):
            for micro, members in enumerate(rank_micros):
                regrouped[cursor : cursor + len(members)] = rows[members]
                micro_at[cursor : cursor + len(members)] = micro
                cursor += len(members)
    # positions are regrouped in (mini-batch, rank) order: put them back in trainer order of shards
    shard_first = np.array([int(rows[0]) for rows in shards.values()])
    blocks = [regrouped[bounds[i] : bounds[i + 1]] for i in range(len(shards))]
    micro_blocks = [micro_at[bounds[i] : bounds[i + 1]] for i in range(len(shards))]
    in_order = np.argsort(shard_first, kind="stable")
    return np.concatenate([blocks[i] for i in in_order]), np.concatenate([micro_blocks[i] for i in in_order])


def _shards(index: np.ndarray, size: np.ndarray, dp: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank and start of the rank's shard for element ``index`` of a run of ``size`` rows cut into
    ``dp`` contiguous shards, the first ``size mod dp`` one row longer. All ``[n]`` int64."""
    small = size // dp  # rows of the short shards
    n_big = size % dp  # the first N mod D shards hold small + 1 rows
    big_rows = n_big * (small + 1)
    rank = np.where(index < big_rows, index // (small + 1), n_big + (index - big_rows) // np.maximum(small, 1))
    start = np.where(rank < n_big, rank * (small + 1), big_rows + (rank - n_big) * small)
    return rank, start


def _canonical(
    positions: np.ndarray, group_ids: np.ndarray | None, order: np.ndarray, layout: Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mini-batch, rank and micro-batch of each trainer position: mini-batches first."""
    n_rows = positions.size
    if layout.mini_batch_prompts is not None:
        assert group_ids is not None
        mini_batch_at = run_ids(group_ids[order]) // layout.mini_batch_prompts  # [n] by position
    elif layout.mini_batch_size is not None:
        mini_batch_at = positions // layout.mini_batch_size
    else:
        mini_batch_at = np.zeros(n_rows, dtype=np.int64)
    n_mini_batches = int(mini_batch_at[-1]) + 1 if n_rows else 0
    rows_per_mini_batch = np.bincount(mini_batch_at, minlength=n_mini_batches).astype(np.int64)  # [n_mb]
    mini_batch_start = np.cumsum(rows_per_mini_batch) - rows_per_mini_batch  # [n_mb]
    in_mini_batch = positions - mini_batch_start[mini_batch_at]  # [n] position inside the mini-batch
    rank_at, shard_start = _shards(in_mini_batch, rows_per_mini_batch[mini_batch_at], layout.dp_size)
    in_shard = in_mini_batch - shard_start  # [n]
    micro_at = in_shard // layout.micro_batch_size if layout.micro_batch_size is not None else np.zeros_like(in_shard)
    return mini_batch_at, rank_at, micro_at


def _ranks_first(positions: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mini-batch, rank and micro-batch of each trainer position: rank shards of the whole step
    first, then chunks of ``mini_batch_size / dp_size`` rows inside each shard (verl)."""
    n_rows = positions.size
    rank_at, shard_start = _shards(positions, np.full_like(positions, n_rows), layout.dp_size)
    in_shard = positions - shard_start  # [n] position inside the rank's shard
    if layout.mini_batch_size is not None:
        per_rank = layout.mini_batch_size // layout.dp_size  # rows of one mini-batch on one rank
        mini_batch_at = in_shard // per_rank
        in_chunk = in_shard - mini_batch_at * per_rank
    else:
        mini_batch_at, in_chunk = np.zeros_like(in_shard), in_shard
    micro_at = in_chunk // layout.micro_batch_size if layout.micro_batch_size is not None else np.zeros_like(in_chunk)
    return mini_batch_at, rank_at, micro_at
