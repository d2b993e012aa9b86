"""Reading logged rollout batches from Parquet into one ``StepBatch`` per step.

Accepted input: a Parquet file, a directory of Parquet files or a glob (``aggscope.io.paths``);
local paths or any URI pyarrow's filesystems understand. Two layouts:

- wide: one row per sequence, with list columns (``advantages``, ``loss_mask``) or a scalar
  ``advantage`` broadcast over the row's loss tokens;
- long: one row per token, with a sequence id column; sequences in order of first appearance.

Each step is an independent batch. Steps are read one at a time: a first pass reads only the step
column to learn which row groups of which files hold each step, and each step then reads just
those row groups and the columns it needs. Opening the files and checking their columns is
``aggscope.io.parquet_files``'; planning where each step is, ``parquet_plan``'; decoding, ``parquet_steps``'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError
from aggscope.io import decode, fastread
from aggscope.io.columns import detect_columns
from aggscope.io.parquet_files import (
    check_roles,
    check_same_columns,
    check_same_layout,
    open_nonempty,
    open_parquet,
    prompt_text_column,
    recorded_metadata,
)
from aggscope.io.parquet_plan import FilePlan, damaged, plan_file, steps_from_names
from aggscope.io.parquet_steps import (
    StepDecoding,
    TokenAccumulator,
    block_batches,
    block_rows,
    block_units,
    decode_block_tokens,
    step_of_rows,
)
from aggscope.io.paths import resolve_paths
from aggscope.io.reader import ReadOptions, Rollouts, Unrecoverable, no_such_step, reject_options, unrecoverable_from


class _OpenFile:
    """The Parquet file read last, kept open for the next step (never pickled: see ``__getstate__``)."""

    def __init__(self, path: str | None = None, file: pq.ParquetFile | None = None) -> None:
        self.path = path
        self.file = file


@dataclass(frozen=True, eq=False)
class ParquetRollouts(Rollouts):
    """A set of Parquet files holding one or more steps of rollout batches (``aggscope.io.reader.Rollouts``).

    Built by ``ParquetRollouts.open(path, options)``, which detects the column roles, checks every
    file and plans where each step is; ``format`` is ``wide`` (one row per sequence) or ``long``
    (one row per token). What ``convert`` recorded in a local file's metadata (the notes, whether
    lengths are estimates) is restored.
    """

    source: str
    files: list[str]
    columns: dict[str, str]
    format: str
    steps: list[int]
    notes: list[str]
    has_groups: bool
    lengths_estimated: bool
    _filesystem: pafs.FileSystem | None
    _plans: tuple[FilePlan, ...]
    _token_columns: tuple[str, ...]  # list columns of one value per token
    _text_column: str | None  # prompt texts the batches carry (uid_texts), read with the rows
    _open: _OpenFile = field(default_factory=_OpenFile, repr=False)
    unrecoverable: tuple[Unrecoverable, ...] = ()  # what the dump ``convert`` read lacked
    recorded_layout: dict[str, int] | None = None  # what the dump ``convert`` read recorded of the layout
    recorded_layout_source: str = ""

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for Ray tasks) without the open file, which each process opens for itself."""
        return {**self.__dict__, "_open": _OpenFile()}

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> ParquetRollouts:
        """Open Parquet rollout files: detect column roles and index the steps (reads no token data).

        Args:
            path: a file, directory or glob, or a filesystem URI.
            options: ``columns`` (``{role: column}`` overrides, see
                ``aggscope.io.columns.ROLE_CANDIDATES``) and ``reward_col``; ``--advantage`` and
                ``--tokenizer`` do not apply to Parquet, which has its own advantages and tokens.
        """
        if options.advantage is not None:
            raise AggscopeError(
                "--advantage rebuilds advantages of dumps that hold only rewards; Parquet input has its own advantages column"
            )
        reject_options(options, "parquet", roles=tuple(options.columns))
        overrides = dict(options.columns)
        if options.reward_col is not None:
            overrides.setdefault("reward", options.reward_col)
        files, filesystem = resolve_paths(path)
        first = open_nonempty(files[0], filesystem)
        schema = first.schema_arrow
        mapping = detect_columns(schema.names, overrides, files[0])
        detected = dict(mapping)  # before the layout keeps one of loss_mask and response_length
        layout, notes = check_roles(mapping, schema, files[0])
        token_columns = tuple(
            mapping[r] for r in ("advantages", "loss_mask") if r in mapping and decode.is_list(schema.field(mapping[r]).type)
        )
        text_column = prompt_text_column(mapping, schema)
        name_steps = steps_from_names(files, notes) if "step" not in mapping else {}
        plans = []
        for file in files:  # each file is opened once, here, and planned while open
            parquet = first if file == files[0] else open_nonempty(file, filesystem)
            if parquet is not first:
                check_same_columns(file, parquet.schema_arrow, detected, overrides, files[0])
                check_same_layout(file, parquet.schema_arrow, detected, (files[0], schema))
                if text_column is not None and prompt_text_column(mapping, parquet.schema_arrow) != text_column:
                    text_column = None  # prompt texts only where every file has them
            plans.append(plan_file(file, parquet, mapping.get("step"), token_columns[0] if token_columns else None, name_steps))
        steps = sorted(set().union(*(s for plan in plans for s in plan.row_group_steps)))
        recorded = recorded_metadata(first, files[0], notes) if filesystem is None else {}
        for note in recorded.get("notes", []):
            if note not in notes:
                notes.append(f"{recorded.get('format', 'source')}: {note}")
        has_groups = "uid" in mapping or "uid_text" in mapping
        estimated = bool(recorded.get("lengths_estimated"))
        return cls(
            path,
            files,
            mapping,
            layout,
            steps,
            notes,
            has_groups,
            estimated,
            filesystem,
            tuple(plans),
            token_columns,
            text_column,
            _OpenFile(files[0], first),  # the first steps are read from the file just planned, without a second footer parse
            unrecoverable=unrecoverable_from(recorded.get("unrecoverable")),
            recorded_layout=recorded.get("recorded_layout") or None,
            recorded_layout_source=f"{recorded.get('recorded_layout_source', 'the dump')}, as convert kept it",
        )

    def read_step(self, step: int) -> StepBatch:
        """Read one step: its row groups only, the needed columns only, in batches of rows."""
        if step not in self._step_set:
            raise no_such_step(self.source, step, self.steps)
        return self._read(step, None)

    @cached_property
    def _step_set(self) -> frozenset[int]:
        return frozenset(self.steps)

    def iter_steps(self) -> Iterator[StepBatch]:
        """Yield one ``StepBatch`` per step, ascending; the next ``READ_AHEAD_STEPS`` steps (or blocks
        of small steps), when small, are read ahead while this one is worked on (``fastread.ReadAhead``)."""
        with fastread.ReadAhead() as ahead:
            units = self._units(blocks=not ahead.plain)
            queued = 0  # units[:queued] are read or queued on the helper thread, which reads in order
            blocked = False  # units[queued] is not small: this thread reads it itself, once it gets there

            def queue_after(index: int) -> None:
                nonlocal queued, blocked
                while not blocked and queued < min(len(units), index + 1 + READ_AHEAD_STEPS):
                    unit = units[queued]
                    if self._read_ahead(unit[0], ahead) if len(unit) == 1 else self._read_block_ahead(unit, ahead):
                        queued += 1
                    else:
                        blocked = True

            queue_after(-1)
            for index, unit in enumerate(units):
                if index < queued:  # its reads are on the helper thread: queue more behind them
                    queue_after(index)
                    if len(unit) > 1:
                        yield from self._read_block(unit, ahead)
                        continue
                    batch = self._read(unit[0], ahead)
                    yield batch
                    del batch
                    continue
                # read here, with nothing in flight (one thread uses a file at a time), then queue
                for position, step in enumerate(unit):
                    batch = self._read(step, ahead)
                    if position == len(unit) - 1:
                        queued, blocked = index + 1, False
                        queue_after(index)
                    yield batch
                    del batch

    # ---- blocks of small steps ----------------------------------------------------------------------
    def _units(self, *, blocks: bool) -> list[tuple[int, ...]]:
        """The steps in order, in units read at once (``parquet_steps.block_units``: runs of small steps
        of a row group each become blocks); ``blocks=False``: every step on its own."""
        if not blocks:
            return [(step,) for step in self.steps]
        return block_units(self.steps, self._block_group, READ_AHEAD_TOKENS, BLOCK_STEPS)

    def _block_group(self, step: int) -> tuple[int, int, int] | None:
        """``(file index, row group, tokens)`` of a step of the wide layout that is one row group of
        its own, small enough to be read in one batch; None for any other step."""
        located = self._groups_of(step)
        if self.format != "wide" or len(located) != 1:
            return None
        file_index, plan, groups = located[0]
        if len(groups) != 1 or len(plan.row_group_steps[groups[0]]) != 1:
            return None
        tokens = _one_batch_tokens(plan, groups[0])
        return None if tokens is None or tokens > READ_AHEAD_TOKENS else (file_index, groups[0], tokens)

    def _block_groups(self, steps: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
        """``_block_group`` of each step, or None if one of them is not such a step."""
        located = [self._block_group(step) for step in steps]
        return None if any(where is None for where in located) else [where for where in located if where is not None]

    def _read_block_ahead(self, steps: tuple[int, ...], ahead: fastread.ReadAhead) -> bool:
        """Queue one read of a block's row groups on ``ahead``'s thread; whether it was queued."""
        located = self._block_groups(steps)
        if ahead.plain or located is None:
            return False
        file_index = located[0][0]
        groups = [group for _, group, _ in located]
        tokens = sum(tokens for _, _, tokens in located)
        try:
            parquet = self._parquet_file(self._plans[file_index].path)
        except AggscopeError:  # a file that cannot be opened: the reader names it at its own step
            return False
        read = partial(parquet.read_row_groups, groups, columns=self._needed, use_threads=tokens >= THREADED_GROUP_TOKENS)
        ahead.submit(("block", steps), read)
        return True

    def _read_block(self, steps: tuple[int, ...], ahead: fastread.ReadAhead) -> Iterator[StepBatch]:
        """The steps of a block read ahead (``_read_block_ahead``), decoded together (one decoding and
        one reduction of all their tokens, each step's batch a view of its part) and given one by one.

        The same batches as reading the steps one by one, byte for byte, and the same errors in the
        same places: where the block's read failed, its steps are read again one by one (once nothing
        else reads the file), so a damaged row group is named at its own step; where decoding the
        block's tokens failed, each step's rows are decoded on their own, so the first bad step
        raises its own error after the steps before it were given.
        """
        located = self._block_groups(steps)
        assert located is not None  # (``_units`` made the block of such steps)
        ready = ahead.take(("block", steps))
        table = None
        if ready is not None:
            try:
                result = ready.result()
                table = result if isinstance(result, pa.Table) else None
            except Exception:  # read again step by step below, which names the damaged row group
                table = None
        bounds, origin = block_rows(self._plans[located[0][0]], located[0][0], [group for _, group, _ in located])
        if table is None or table.num_rows != bounds[-1]:
            ahead.wait()  # no other read of the file is in flight
            for step in steps:
                yield self._read(step, None)
            return
        try:
            tokens = decode_block_tokens(self._decoding, table, origin)
        except AggscopeError:  # decoded step by step: the first bad step raises its own error, in its place
            for step, first, last in zip(steps, bounds[:-1], bounds[1:], strict=True):
                part = table.slice(int(first), int(last - first))
                yield self._decode_step(step, [(part, origin[first:last])] if part.num_rows else [])
            return
        yield from block_batches(self._decoding, steps, table, origin, bounds, tokens)

    def _read(self, step: int, ahead: fastread.ReadAhead | None) -> StepBatch:
        if self.format == "long":
            return self._read_long_step(step, ahead)
        return self._decode_step(step, self._batches(step, ahead))

    def _decode_step(self, step: int, parts: Iterable[tuple[pa.Table, np.ndarray]]) -> StepBatch:
        """The step's batch from its rows' tables in input order with their origins (``_batches``)."""
        tokens = TokenAccumulator(self.step_tokens(step))
        row_tables: list[pa.Table] = []
        origins: list[np.ndarray] = []
        with fastread.StatsPipeline() as stats:
            for batch, origin in parts:
                where = decode.RowLocator(self._paths, origin)
                advantages, mask, offsets = decode.decode_wide_tokens(batch, self.columns, where)
                tokens.add(advantages, mask, offsets)
                stats.submit(advantages, mask, offsets)
                fastread.tell_listeners(advantages.size)
                row_tables.append(batch.drop_columns([name for name in self._token_columns if name in batch.column_names]))
                origins.append(origin)
            rows = decode.concat_rows(row_tables, self.columns, self._step_source)
            del row_tables
            where = decode.RowLocator(self._paths, np.concatenate(origins))
            batch = step_of_rows(self._decoding, step, rows, where, *tokens.finish())
            batch_stats = stats.result()
        return batch if batch_stats is None else batch.with_stats(batch_stats)

    @cached_property
    def _decoding(self) -> StepDecoding:
        """What decoding a step's tables needs of this input (``parquet_steps``)."""
        return StepDecoding(
            self.columns, self._paths, self._token_columns, self._text_column, self._step_source, self.lengths_estimated
        )

    # ---- reading internals ---------------------------------------------------------------------
    @property
    def _paths(self) -> list[str]:
        return [plan.path for plan in self._plans]

    @property
    def _step_source(self) -> str:
        return self.files[0] if len(self.files) == 1 else self.source

    def _groups_of(self, step: int) -> list[tuple[int, FilePlan, list[int]]]:
        """``(file index, plan, row groups)`` of every file holding ``step``, in file order."""
        return self._step_index.get(step, [])

    @cached_property
    def _step_index(self) -> dict[int, list[tuple[int, FilePlan, list[int]]]]:
        """Where each step is, built once: a run of thousands of steps looks each one up in O(1)."""
        index: dict[int, list[tuple[int, FilePlan, list[int]]]] = {}
        for file_index, plan in enumerate(self._plans):
            groups_of_step: dict[int, list[int]] = {}
            for group, steps in enumerate(plan.row_group_steps):
                for step in steps:
                    groups_of_step.setdefault(step, []).append(group)
            for step, groups in groups_of_step.items():
                index.setdefault(step, []).append((file_index, plan, groups))
        return index

    @cached_property
    def _needed(self) -> list[str]:
        """The columns a step's read decodes."""
        return sorted({*self.columns.values(), *([self._text_column] if self._text_column else [])})

    def _batches(self, step: int, ahead: fastread.ReadAhead | None = None) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """The step's rows in input order, as tables of about ``READ_BATCH_TOKENS`` tokens.

        Decoding a large row group in batches keeps memory at a batch's size (a trainer often
        writes a whole step as one row group) and is faster than one big read, since each batch's
        buffers stay in the CPU caches. Yields ``(table, origin)`` with ``origin`` the
        ``[n_rows, 2]`` (file index, row in file) of each row. A row group that ``ahead`` read
        already (``_read_ahead``) is taken from it.
        """
        needed = self._needed
        step_column = self.columns.get("step")
        for file_index, plan, groups in self._groups_of(step):
            for group in groups:
                shared = len(plan.row_group_steps[group]) > 1
                row = plan.row_group_starts[group]
                tokens = None if plan.row_group_tokens is None else plan.row_group_tokens[group]
                ready = None if ahead is None else ahead.take((step, file_index, group))
                if ready is None:
                    tables = _group_tables(self._parquet_file(plan.path), group, tokens, needed)
                else:
                    tables = _ready_table(ready)
                for table in _damage_named(plan.path, group, tables):
                    rows = np.arange(row, row + table.num_rows)
                    row += table.num_rows
                    if shared and step_column is not None:  # only rows of this step
                        keep = np.asarray(
                            decode.numpy_of(pc.fill_null(pc.equal(table.column(step_column), step), False)), dtype=bool
                        )
                        table, rows = table.filter(pa.array(keep)), rows[keep]
                    if table.num_rows:
                        yield table, np.stack([np.full(rows.size, file_index), rows], axis=1)

    def _read_ahead(self, step: int, ahead: fastread.ReadAhead) -> bool:
        """Queue the reads of ``step``'s row groups on ``ahead``'s thread when the step is small
        (every group read in one call, as ``_group_tables`` would, and at most ``READ_AHEAD_TOKENS``
        tokens in all); whether they were queued."""
        located = self._groups_of(step)
        if ahead.plain or not located:
            return False
        reads = []
        total = 0
        for file_index, plan, groups in located:
            for group in groups:
                tokens = _one_batch_tokens(plan, group)
                if tokens is None or total + tokens > READ_AHEAD_TOKENS:
                    return False
                total += tokens
                reads.append((file_index, plan.path, group, tokens >= THREADED_GROUP_TOKENS))
        try:
            files = [self._parquet_file(path) for _, path, _, _ in reads]
        except AggscopeError:  # a file that cannot be opened: the reader names it at its own step
            return False
        for (file_index, _, group, threads), parquet in zip(reads, files, strict=True):
            read = partial(parquet.read_row_group, group, columns=self._needed, use_threads=threads)
            ahead.submit((step, file_index, group), read)
        return True

    def _parquet_file(self, path: str) -> pq.ParquetFile:
        """The file, kept open from one step to the next: consecutive steps are mostly in the same
        file, whose footer (one entry per row group) can take milliseconds to parse."""
        if self._open.file is None or self._open.path != path:
            self._open.path, self._open.file = path, open_parquet(path, self._filesystem)
        return self._open.file

    def step_tokens(self, step: int) -> int | None:
        """The step's token count from the Parquet metadata alone: an upper bound, used only where it is tight.

        A list column's leaf holds one entry per value plus one per empty or null list, so the
        sum over the step's row groups bounds its token count. It is used only when those row
        groups hold nothing but this step, so the bound is (nearly) exact.
        """
        total = 0
        for _, plan, groups in self._groups_of(step):
            counts = plan.row_group_tokens
            if counts is None or any(len(plan.row_group_steps[g]) > 1 for g in groups):
                return None
            total += sum(counts[g] for g in groups)
        return total

    def _read_long_step(self, step: int, ahead: fastread.ReadAhead | None) -> StepBatch:
        """The long layout (one row per token) is decoded as one table: its sequences are ordered by
        first appearance over all the step's rows."""
        tables, origins = [], []
        for table, origin in self._batches(step, ahead):
            tables.append(table)
            origins.append(origin)
            fastread.tell_listeners(table.num_rows)
        table = decode.concat_rows(tables, self.columns, self._step_source)
        where = decode.RowLocator(self._paths, np.concatenate(origins))
        return decode.decode_long(table, self.columns, step, self._step_source, where, self.lengths_estimated, self._text_column)


THREADED_GROUP_TOKENS = 1 << 16  # a row group of fewer tokens is decoded without pyarrow's threads
READ_BATCH_TOKENS = 1 << 19  # tokens decoded per batch: ~2.5 MB of a float32 and an int8 column (the best of 2^18-2^21 here)
WHOLE_GROUP_TOKENS = 1 << 21  # a row group of at most this many tokens is decoded in one call (``_group_tables``)
READ_AHEAD_TOKENS = 1 << 20  # a next step of at most this many tokens (in row groups of one batch each) is read ahead
READ_AHEAD_STEPS = 2  # steps (or blocks of small steps) read ahead at most
BLOCK_STEPS = 64  # small steps read and decoded together at most (``_units``)


def _one_batch_tokens(plan: FilePlan, group: int) -> int | None:
    """The tokens of row group ``group`` when the metadata tells them and the group is read in one
    batch (``_group_tables``), as a read ahead takes it; None otherwise."""
    if plan.row_group_tokens is None:
        return None
    tokens, num_rows = plan.row_group_tokens[group], plan.group_rows(group)
    return tokens if num_rows <= _rows_per_batch(num_rows, tokens) else None


def _rows_per_batch(num_rows: int, tokens: int | None) -> int:
    """Rows per batch so that a batch of a row group of ``num_rows`` rows and ``tokens`` token
    entries (None: not known) holds about ``READ_BATCH_TOKENS`` tokens."""
    if tokens is None or num_rows == 0:
        return 65536
    per_row = max(1.0, tokens / num_rows)
    return max(1, int(READ_BATCH_TOKENS / per_row))


def _ready_table(ready: Future[object]) -> Iterator[pa.Table]:
    """The table a read ahead made (``_read_ahead``); its error, if it failed, raised here."""
    table = ready.result()
    assert isinstance(table, pa.Table)
    yield table


def _group_tables(parquet: pq.ParquetFile, group: int, tokens: int | None, columns: list[str]) -> Iterator[pa.Table]:
    """Row group ``group`` of ``parquet`` (``tokens`` token entries, None: not known) as tables of
    about ``READ_BATCH_TOKENS`` tokens (``_rows_per_batch``).

    A group that fits in one batch (a small step) is read with one ``read_row_group``: about
    half the cost of setting up ``iter_batches`` for it, with the same rows and types; a small one
    on this thread, as handing its few pages to pyarrow's thread pool costs more than it saves. A
    group of at most ``WHOLE_GROUP_TOKENS`` tokens is read whole too, on pyarrow's threads, and
    given as slices of about ``READ_BATCH_TOKENS`` tokens (views of it): the stats of its slices
    are reduced on two threads as a larger group's batches are.
    """
    num_rows = parquet.metadata.row_group(group).num_rows
    batch_rows = _rows_per_batch(num_rows, tokens)
    if num_rows <= batch_rows:
        yield parquet.read_row_group(group, columns=columns, use_threads=tokens is None or tokens >= THREADED_GROUP_TOKENS)
        return
    if tokens is not None and tokens <= WHOLE_GROUP_TOKENS:
        whole = parquet.read_row_group(group, columns=columns, use_threads=True)
        for start in range(0, whole.num_rows, batch_rows):
            yield whole.slice(start, batch_rows)
        return
    for record_batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
        yield pa.Table.from_batches([record_batch])


def _damage_named(path: str, group: int, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``tables``, a decoding error of the file (a corrupt page, say) named with its file and row group."""
    try:
        yield from tables
    except (pa.ArrowException, OSError) as exc:
        raise damaged(path, group, exc) from None
