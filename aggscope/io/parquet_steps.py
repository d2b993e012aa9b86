"""From the tables of a Parquet input to its steps' batches (``aggscope.io.parquet`` reads the tables).

- ``TokenAccumulator``: the flat token arrays of one step, filled part by part as it is decoded.
- ``step_of_rows``: a step's batch from its decoded tokens and its per-row columns.
- Blocks: a run of small steps, each one row group of its own, is read with one call and decoded
  together (``block_units`` forms the runs, ``decode_block_tokens`` decodes and reduces all their
  tokens at once, ``block_batches`` gives each step's batch, a view of its part). Many small steps
  then pay one decoding and one reduction per block instead of per step; every sequence is reduced
  on its own, so each step's stats are the ones it has read alone, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from aggscope.core.batch import SequenceStats, StepBatch, factorize, offsets_of, sequence_stats_numpy
from aggscope.errors import AggscopeError
from aggscope.io import decode, fastread
from aggscope.io.parquet_plan import FilePlan


@dataclass(frozen=True)
class StepDecoding:
    """What decoding a step's tables needs of its input."""

    columns: Mapping[str, str]  # role -> column
    paths: list[str]  # the input's files, for messages (``decode.RowLocator``)
    token_columns: tuple[str, ...]  # list columns of one value per token
    text_column: str | None  # prompt texts the batches carry
    source: str  # the batches' source, for messages
    lengths_estimated: bool


def step_of_rows(
    decoding: StepDecoding,
    step: int,
    rows: pa.Table,
    where: decode.RowLocator,
    advantages: np.ndarray,
    mask: np.ndarray,
    offsets: np.ndarray,
    decoded: RowColumns | None = None,
) -> StepBatch:
    """The batch of a step from its tokens and its rows' other columns (uids, rewards, prompt texts);
    ``decoded``: its uids and rewards decoded already (``BlockColumns.of_rows``)."""
    if decoded is None:
        group_ids, labels = decode.uid_groups(rows, decoding.columns, where)
        rewards = decode.rewards_of(rows, decoding.columns, where)
    else:
        group_ids, labels, rewards = decoded
    texts = None
    if decoding.text_column is not None and group_ids is not None and labels is not None:
        texts = decode.uid_texts_of(decode.column_of(rows, decoding.text_column), group_ids, len(labels))
    return decode.step_batch(
        step, decoding.source, advantages, mask, offsets, group_ids, labels, rewards, decoding.lengths_estimated, texts
    )


# ---- blocks of small steps ---------------------------------------------------------------------------
def block_units(
    steps: Sequence[int], locate: Callable[[int], tuple[int, int, int] | None], max_tokens: int, max_steps: int
) -> list[tuple[int, ...]]:
    """``steps`` in order, in units read at once: consecutive steps that ``locate`` places (``(file
    index, row group, tokens)``: a small step of one row group of its own) in the same file, of at
    most ``max_tokens`` tokens and ``max_steps`` steps in all, make one unit (a block); every other
    step is a unit of its own."""
    units: list[tuple[int, ...]] = []
    run: list[int] = []  # the steps of the block being formed
    run_file = run_tokens = 0

    def close_run() -> None:
        units.extend([tuple(run)] if len(run) > 1 else [(step,) for step in run])
        run.clear()

    for step in steps:
        located = locate(step)
        if located is None or not (
            run and located[0] == run_file and run_tokens + located[2] <= max_tokens and len(run) < max_steps
        ):
            close_run()
        if located is None:
            units.append((step,))
            continue
        if not run:
            run_file, run_tokens = located[0], 0
        run.append(step)
        run_tokens += located[2]
    close_run()
    return units


def block_rows(plan: FilePlan, file_index: int, groups: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Where a block's rows are: ``([n_steps + 1] int64 bounds`` of each step's rows in the block,
    ``[n_rows, 2]`` each row's file index and row in its file) for the row groups ``groups``
    (one per step, in order) of file ``file_index``, planned as ``plan``."""
    group_rows = [plan.group_rows(group) for group in groups]
    bounds = np.concatenate([[0], np.cumsum(group_rows)]).astype(np.int64)
    starts = [plan.row_group_starts[group] for group in groups]
    file_rows = np.concatenate([np.arange(start, start + n) for start, n in zip(starts, group_rows, strict=True)])
    return bounds, np.stack([np.full(file_rows.size, file_index), file_rows], axis=1)


@dataclass(frozen=True)
class BlockTokens:
    """The tokens of a block's rows, decoded and reduced at once."""

    advantages: np.ndarray  # [n_tokens]
    mask: np.ndarray  # [n_tokens] bool
    offsets: np.ndarray  # [n_rows + 1] int64 from 0
    stats: SequenceStats  # [n_rows]


def decode_block_tokens(decoding: StepDecoding, table: pa.Table, origin: np.ndarray) -> BlockTokens:
    """Every token of a block's ``table`` (``origin [n_rows, 2]``: each row's file index and row in
    its file); raises the first decoding error of its rows."""
    advantages, mask, offsets = decode.decode_wide_tokens(table, decoding.columns, decode.RowLocator(decoding.paths, origin))
    return BlockTokens(advantages, mask, offsets, sequence_stats_numpy(advantages, mask, offsets))


def block_batches(
    decoding: StepDecoding,
    steps: Sequence[int],
    table: pa.Table,
    origin: np.ndarray,
    bounds: np.ndarray,
    tokens: BlockTokens,
) -> Iterator[StepBatch]:
    """Each step's batch, in order: step ``steps[i]`` is the rows ``bounds[i]:bounds[i + 1]`` of the
    block's ``table``; its arrays and stats are views of ``tokens``'. An error in a step's other
    columns (a null uid, say) is raised in its place, after the steps before it."""
    rows = table.drop_columns([name for name in decoding.token_columns if name in table.column_names])
    offsets = tokens.offsets
    columns = BlockColumns.of(decoding, rows, origin)
    for step, first, last in zip(steps, bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        start, stop = int(offsets[first]), int(offsets[last])
        batch = step_of_rows(
            decoding,
            step,
            rows.slice(first, last - first),
            decode.RowLocator(decoding.paths, origin[first:last]),
            tokens.advantages[start:stop],
            tokens.mask[start:stop],
            offsets[first : last + 1] - start,
            None if columns is None else columns.of_rows(first, last),
        ).with_stats(tokens.stats.rows(first, last))
        fastread.tell_listeners(stop - start)
        yield batch
        del batch


RowColumns = tuple[np.ndarray | None, tuple[str, ...] | None, np.ndarray | None]
"""A step's ``(group codes, uid of each code, rewards)``, as ``decode.uid_groups`` and ``decode.rewards_of`` give them."""


@dataclass(frozen=True)
class BlockColumns:
    """The uids and rewards of a block's rows, decoded once for all its steps (``of_rows`` gives a
    step's, numbered as decoding the step's rows alone numbers them)."""

    codes: np.ndarray | None  # [n_rows] uid codes by first appearance in the block
    labels: tuple[str, ...] | None  # the uid of each block code
    rewards: np.ndarray | None  # [n_rows] float64

    @classmethod
    def of(cls, decoding: StepDecoding, rows: pa.Table, origin: np.ndarray) -> BlockColumns | None:
        """The block's columns; None where a row's uid or reward does not decode, or rewards are lists
        (each step then decodes its own, so an error comes in its step's place)."""
        reward = decoding.columns.get("reward")
        if reward is not None and decode.is_list(rows.schema.field(reward).type):
            return None
        where = decode.RowLocator(decoding.paths, origin)
        try:
            codes, labels = decode.uid_groups(rows, decoding.columns, where)
            rewards = decode.rewards_of(rows, decoding.columns, where)
        except AggscopeError:
            return None
        return cls(codes, labels, rewards)

    def of_rows(self, first: int, last: int) -> RowColumns:
        rewards = None if self.rewards is None else self.rewards[first:last]
        if self.codes is None or self.labels is None:
            return None, None, rewards
        codes, block_codes = factorize(self.codes[first:last])
        return codes, tuple(self.labels[code] for code in block_codes.tolist()), rewards


# ---- one step, part by part -----------------------------------------------------------------------------
class TokenAccumulator:
    """The flat token arrays of one step, filled batch by batch.

    With a known capacity the values are copied straight into preallocated arrays, so the step
    never exists twice in memory; a large step's pages are touched ahead of the copy (``fastread.touch_pages``).
    Without one, batches are kept and joined at the end.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.size = 0
        self.advantages: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.toucher: fastread.PageToucher | None = None
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.lengths: list[np.ndarray] = []

    def add(self, advantages: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        n = advantages.size
        self.lengths.append(np.diff(offsets))
        if self.capacity is not None and self.advantages is None:
            self.advantages = np.empty(self.capacity, dtype=advantages.dtype)
            self.mask = np.empty(self.capacity, dtype=bool)
            self.toucher = fastread.touch_pages([self.advantages, self.mask])
        if self.advantages is not None and self.mask is not None:
            fits = self.size + n <= self.advantages.size and advantages.dtype == self.advantages.dtype
            if self.toucher is not None:
                self.toucher.before_write(self.size + n if fits else self.advantages.size)
            if fits:
                self.advantages[self.size : self.size + n] = advantages
                self.mask[self.size : self.size + n] = mask
                self.size += n
                return
            # The bound was wrong: keep what is filled as one part and go on without it.
            self.parts.append((self.advantages[: self.size], self.mask[: self.size]))
            self.advantages = self.mask = None
            self.capacity = None
        self.parts.append((advantages, mask))
        self.size += n

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(advantages [n_tokens], mask [n_tokens] bool, offsets [n_seqs + 1] int64)``."""
        if self.toucher is not None:
            self.toucher.stop()
        offsets = offsets_of(np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64))
        if self.advantages is not None and self.mask is not None:
            return self.advantages[: self.size], self.mask[: self.size], offsets
        if len(self.parts) == 1:
            return self.parts[0][0], self.parts[0][1], offsets
        dtype = np.result_type(*(p[0].dtype for p in self.parts)) if self.parts else np.float32
        advantages = np.concatenate([p[0] for p in self.parts]).astype(dtype, copy=False) if self.parts else np.zeros(0, dtype)
        mask = np.concatenate([p[1] for p in self.parts]) if self.parts else np.zeros(0, dtype=bool)
        return advantages, mask, offsets
