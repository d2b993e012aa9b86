"""Reading logged rollout batches from Parquet into one ``StepBatch`` per step.

Accepted input: a Parquet file, a directory of Parquet files (read recursively, in sorted path
order) or a glob; local paths or any URI pyarrow's filesystems understand. Two layouts:

- wide: one row per sequence, with list columns (``advantages``, ``loss_mask``) or a scalar
  ``advantage`` broadcast over the row's loss tokens;
- long: one row per token, with a sequence id column; sequences in order of first appearance.

Each step is an independent batch. Steps are read one at a time: a first pass reads only the step
column to learn which row groups of which files hold each step, and each step then reads just
those row groups and the columns it needs.
"""

from __future__ import annotations

import glob as globlib
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from aggscope.core.batch import SequenceStats, StepBatch, sequence_stats_numpy, text_uid
from aggscope.errors import AggscopeError
from aggscope.io.columns import detect_columns, step_from_name
from aggscope.io.limits import check_fits, check_step

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class _FilePlan:
    """Which row groups of one file hold which steps."""

    path: str
    row_group_steps: tuple[frozenset[int], ...]
    row_group_starts: tuple[int, ...]
    num_rows: int
    row_group_tokens: tuple[int, ...] | None = None  # entries of the first token list column's leaf


@dataclass
class ParquetRollouts:
    """A set of Parquet files holding one or more steps of rollout batches.

    Attributes:
        source: the path as given, for messages.
        files: the files in reading order.
        columns: role -> column name, as detected or set.
        layout: ``wide`` (one row per sequence) or ``long`` (one row per token).
        steps: the step numbers present, ascending.
    """

    source: str
    files: list[str]
    columns: dict[str, str]
    layout: str
    steps: list[int]
    notes: list[str] = field(default_factory=list)
    _filesystem: pafs.FileSystem | None = None
    _plans: list[_FilePlan] = field(default_factory=list)
    _token_columns: list[str] = field(default_factory=list)  # list columns of one value per token
    _open_file: tuple[str, pq.ParquetFile] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for Ray tasks) without the open file, which each process opens for itself."""
        return {**self.__dict__, "_open_file": None}

    @property
    def has_groups(self) -> bool:
        return "uid" in self.columns or "uid_text" in self.columns

    @property
    def lengths_estimated(self) -> bool:
        return False

    def iter_steps(self) -> Iterator[StepBatch]:
        """Yield one ``StepBatch`` per step, ascending, holding only that step in memory."""
        for step in self.steps:
            yield self.read_step(step)

    def read_step(self, step: int) -> StepBatch:
        """Read one step: its row groups only, the needed columns only, in batches of rows."""
        if self.layout == "long":
            return self._read_long_step(step)
        tokens = _TokenAccumulator(self.step_tokens(step))
        row_tables: list[pa.Table] = []
        origins: list[np.ndarray] = []
        with _StatsPipeline() as stats:
            for batch, origin in self._batches(step):
                where = _RowLocator(self._paths, origin)
                advantages, mask, offsets = _decode_wide_tokens(batch, self.columns, where)
                tokens.add(advantages, mask, offsets)
                stats.submit(advantages, mask, offsets)
                _tell_listeners(advantages.size)
                row_tables.append(batch.drop_columns([name for name in self._token_columns if name in batch.column_names]))
                origins.append(origin)
            rows = _concat_rows(row_tables, self.columns, self._step_source)
            del row_tables
            where = _RowLocator(self._paths, np.concatenate(origins))
            advantages, mask, offsets = tokens.finish()
            group_ids, labels = _group_ids(rows, self.columns, where)
            rewards = _rewards(rows, self.columns, where)
            batch_stats = stats.result()
        return _step_batch(step, self._step_source, advantages, mask, offsets, group_ids, labels, rewards).with_stats(batch_stats)

    # ---- reading internals ---------------------------------------------------------------------
    @property
    def _paths(self) -> list[str]:
        return [plan.path for plan in self._plans]

    @property
    def _step_source(self) -> str:
        return self.files[0] if len(self.files) == 1 else self.source

    def _groups_of(self, step: int) -> list[tuple[int, _FilePlan, list[int]]]:
        """``(file index, plan, row groups)`` of every file holding ``step``, in file order."""
        return self._step_index.get(step, [])

    @cached_property
    def _step_index(self) -> dict[int, list[tuple[int, _FilePlan, list[int]]]]:
        """Where each step is, built once: a run of thousands of steps looks each one up in O(1)."""
        index: dict[int, list[tuple[int, _FilePlan, list[int]]]] = {}
        for file_index, plan in enumerate(self._plans):
            groups_of_step: dict[int, list[int]] = {}
            for group, steps in enumerate(plan.row_group_steps):
                for step in steps:
                    groups_of_step.setdefault(step, []).append(group)
            for step, groups in groups_of_step.items():
                index.setdefault(step, []).append((file_index, plan, groups))
        return index

    def _batches(self, step: int) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """The step's rows in input order, as tables of about ``READ_BATCH_TOKENS`` tokens.

        Decoding a large row group in batches keeps memory at a batch's size (a trainer often
        writes a whole step as one row group) and is faster than one big read, since each batch's
        buffers stay in the CPU caches. Yields ``(table, origin)`` with ``origin`` the
        ``[n_rows, 2]`` (file index, row in file) of each row.
        """
        needed = sorted(set(self.columns.values()))
        step_column = self.columns.get("step")
        for file_index, plan, groups in self._groups_of(step):
            parquet = self._parquet_file(plan.path)
            for group in groups:
                shared = len(plan.row_group_steps[group]) > 1
                row = plan.row_group_starts[group]
                batch_rows = _rows_per_batch(
                    parquet.metadata.row_group(group).num_rows,
                    None if plan.row_group_tokens is None else plan.row_group_tokens[group],
                )
                for record_batch in _damage_named(
                    plan.path, group, parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=needed)
                ):
                    table = pa.Table.from_batches([record_batch])
                    rows = np.arange(row, row + table.num_rows)
                    row += table.num_rows
                    if shared and step_column is not None:  # only rows of this step
                        keep = np.asarray(pc.equal(table.column(step_column), step).to_numpy(zero_copy_only=False), dtype=bool)
                        table, rows = table.filter(pa.array(keep)), rows[keep]
                    if table.num_rows:
                        yield table, np.stack([np.full(rows.size, file_index), rows], axis=1)

    def _parquet_file(self, path: str) -> pq.ParquetFile:
        """The file, kept open from one step to the next: consecutive steps are mostly in the same
        file, whose footer (one entry per row group) can take milliseconds to parse."""
        if self._open_file is None or self._open_file[0] != path:
            self._open_file = (path, _open_parquet(path, self._filesystem))
        return self._open_file[1]

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

    def _read_long_step(self, step: int) -> StepBatch:
        """The long layout (one row per token) is decoded as one table: its sequences are ordered by
        first appearance over all the step's rows."""
        tables, origins = [], []
        for table, origin in self._batches(step):
            tables.append(table)
            origins.append(origin)
            _tell_listeners(table.num_rows)
        table = _concat_rows(tables, self.columns, self._step_source)
        where = _RowLocator(self._paths, np.concatenate(origins))
        return _decode_long(table, self.columns, step, self._step_source, where)


_read_listeners: list[Callable[[int], None]] = []


@contextmanager
def reading_progress(listener: Callable[[int], None]) -> Iterator[None]:
    """Call ``listener(tokens)`` after each batch of tokens that Parquet reading in this process decodes."""
    _read_listeners.append(listener)
    try:
        yield
    finally:
        _read_listeners.remove(listener)


def _tell_listeners(tokens: int) -> None:
    for listener in _read_listeners:
        listener(tokens)


READ_BATCH_TOKENS = 1 << 19  # tokens decoded per batch: ~2.5 MB of a float32 and an int8 column (the best of 2^18-2^21 here)
TOUCH_PAGES_FROM = 1 << 24  # steps of this many tokens or more get their pages touched ahead of the copy


def _concat_rows(tables: list[pa.Table], columns: Mapping[str, str], source: str) -> pa.Table:
    """The per-row columns of a step's batches as one table.

    Files of one input may store a column with different types: numbers are promoted (float32
    and float64 rewards, say); a uid stored as integers in some files and as text in others is
    read as text, which is how uids are compared anyway.
    """
    if len(tables) == 1:
        return tables[0]
    uid = columns.get("uid")
    if uid is not None and len({t.schema.field(uid).type for t in tables}) > 1:
        tables = [t.set_column(t.schema.get_field_index(uid), uid, pc.cast(t.column(uid), pa.string())) for t in tables]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AggscopeError(f"{source}: the files store a column with types that do not combine ({_first_line(exc)})") from None


def _rows_per_batch(num_rows: int, tokens: int | None) -> int:
    """Rows per batch so that a batch of a row group of ``num_rows`` rows and ``tokens`` token
    entries (None: not known) holds about ``READ_BATCH_TOKENS`` tokens."""
    if tokens is None or num_rows == 0:
        return 65536
    per_row = max(1.0, tokens / num_rows)
    return max(1, int(READ_BATCH_TOKENS / per_row))


def _leaf_index(metadata: pq.FileMetaData, name: str) -> int | None:
    """The Parquet leaf column of a (list) column of the Arrow schema, or None if not exactly one."""
    leaves = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path.split(".")[0] == name]
    return leaves[0] if len(leaves) == 1 else None


class _PageToucher:
    """Touches the pages of freshly allocated arrays while the reader fills them.

    The first write to a page of new memory costs a page fault; for a step of 1e8 tokens that is
    about a second of the read. A background thread takes those faults while the reading thread
    decodes Parquet (both release the GIL). The reader fills the arrays from the start, the thread
    touches them from the end, one zero per page, a chunk at a time. Under a lock, the reader
    claims ``[0, claimed)`` before each write and the thread reserves each chunk at or above
    ``claimed`` before touching it; when the reader needs a place the thread has reserved, the two
    have met and the reader stops the thread and waits for it. So they never write the same place.
    """

    CHUNK_BYTES = 16 << 20
    PAGE_BYTES = 4096

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = list(arrays)
        self._chunk = max(1, self.CHUNK_BYTES // max(a.itemsize for a in self._arrays))
        self._lock = threading.Lock()
        self._reserved = min(a.size for a in self._arrays)  # the thread writes only at or above this
        self._claimed = 0  # the reader writes only below this
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aggscope-page-toucher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                end = self._reserved
                start = max(self._claimed, end - self._chunk)
                if start >= end:
                    return
                self._reserved = start
            for array in self._arrays:
                array[start : end : max(1, self.PAGE_BYTES // array.itemsize)] = 0

    def before_write(self, end: int) -> None:
        """Call before writing elements ``[.., end)``; stops the thread once the two would meet."""
        with self._lock:
            if end <= self._reserved:
                self._claimed = max(self._claimed, end)
                return
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


_stats_pool: ThreadPoolExecutor | None = None
_stats_pool_lock = threading.Lock()


def _stats_worker() -> ThreadPoolExecutor:
    """The one thread that reduces decoded parts, started on first use and kept for the next steps."""
    global _stats_pool
    with _stats_pool_lock:
        if _stats_pool is None:
            _stats_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggscope-stats")
        return _stats_pool


def _forget_stats_pool() -> None:
    global _stats_pool
    _stats_pool = None  # a forked child has no threads: it starts its own


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_stats_pool)


class _StatsPipeline:
    """Reduces each decoded part of a step to its per-sequence stats on a second thread.

    The reading thread goes on decoding the next part meanwhile (numpy and Parquet decoding both
    release the GIL), so the reductions cost little beyond the read, and each runs on a part still
    warm in the CPU caches. Each sequence is reduced on its own, so the concatenated stats equal
    those of the whole step bit for bit. At most ``IN_FLIGHT`` parts wait, which bounds the memory
    they hold when the reductions fall behind. A step of a single part is reduced right here: for
    small steps handing work to the thread costs more than it saves.
    """

    IN_FLIGHT = 4

    def __init__(self) -> None:
        self._first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending: deque[Future[SequenceStats]] = deque()
        self._done: list[SequenceStats] = []

    def __enter__(self) -> _StatsPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending:  # on an error: drop what has not started, wait for the rest
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()
        self._pending.clear()

    def submit(self, advantages: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        if self._first is None and not self._pending and not self._done:
            self._first = (advantages, mask, offsets)
            return
        if self._first is not None:
            first, self._first = self._first, None
            self._pending.append(_stats_worker().submit(sequence_stats_numpy, *first))
        if len(self._pending) >= self.IN_FLIGHT:
            self._done.append(self._pending.popleft().result())
        self._pending.append(_stats_worker().submit(sequence_stats_numpy, advantages, mask, offsets))

    def result(self) -> SequenceStats:
        """The stats of every part submitted, in order."""
        if self._first is not None:
            first, self._first = self._first, None
            return sequence_stats_numpy(*first)
        while self._pending:
            self._done.append(self._pending.popleft().result())
        return SequenceStats.concat(self._done)


class _TokenAccumulator:
    """The flat token arrays of one step, filled batch by batch.

    With a known capacity the values are copied straight into preallocated arrays, so the step
    never exists twice in memory; their pages are touched ahead of the copy by a ``_PageToucher``.
    Without one, batches are kept and joined at the end.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.size = 0
        self.advantages: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.toucher: _PageToucher | None = None
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.lengths: list[np.ndarray] = []

    def add(self, advantages: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        n = advantages.size
        self.lengths.append(np.diff(offsets))
        if self.capacity is not None and self.advantages is None:
            self.advantages = np.empty(self.capacity, dtype=advantages.dtype)
            self.mask = np.empty(self.capacity, dtype=bool)
            if self.capacity >= TOUCH_PAGES_FROM:
                self.toucher = _PageToucher([self.advantages, self.mask])
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
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if self.advantages is not None and self.mask is not None:
            return self.advantages[: self.size], self.mask[: self.size], offsets
        if len(self.parts) == 1:
            return self.parts[0][0], self.parts[0][1], offsets
        dtype = np.result_type(*(p[0].dtype for p in self.parts)) if self.parts else np.float32
        advantages = np.concatenate([p[0] for p in self.parts]).astype(dtype, copy=False) if self.parts else np.zeros(0, dtype)
        mask = np.concatenate([p[1] for p in self.parts]) if self.parts else np.zeros(0, dtype=bool)
        return advantages, mask, offsets


@dataclass(frozen=True)
class _RowLocator:
    """Names the file and row behind a row of a step, for error messages."""

    paths: list[str]
    origin: np.ndarray  # [n_rows, 2] (file index, row in file)

    def __call__(self, row: int) -> str:
        file_index, file_row = self.origin[row]
        return f"{self.paths[int(file_index)]}: row {int(file_row)}"


def resolve_paths(path: str) -> tuple[list[str], pafs.FileSystem | None]:
    """The Parquet files behind a file, directory or glob (local, or a pyarrow filesystem URI)."""
    if "://" in path:
        try:
            filesystem, root = pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise AggscopeError(f"{path}: cannot open this location ({_first_line(exc)})") from None
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise AggscopeError(f"{path}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
            files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
            if not files:
                raise AggscopeError(f"{path}: no .parquet files in this directory")
            return files, filesystem
        return [root], filesystem
    if any(ch in path for ch in _GLOB_CHARS) and not os.path.exists(path):
        files = sorted(p for p in globlib.glob(path, recursive=True) if os.path.isfile(p))
        if not files:
            raise AggscopeError(f"{path}: no file matches this pattern")
        return files, None
    if not os.path.exists(path):
        raise AggscopeError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(".parquet") and not name.startswith(".")
        )
        if not files:
            raise AggscopeError(f"{path}: no .parquet files in this directory")
        return files, None
    return [path], None


def open_parquet_rollouts(path: str, columns: Mapping[str, str] | None = None) -> ParquetRollouts:
    """Open Parquet rollout files: detect column roles and index the steps (reads no token data).

    Args:
        path: a file, directory or glob, or a filesystem URI.
        columns: explicit ``{role: column}`` overrides (see ``aggscope.io.columns.ROLE_CANDIDATES``).
    """
    files, filesystem = resolve_paths(path)
    overrides = dict(columns or {})
    first = _open_nonempty(files[0], filesystem)
    schema = first.schema_arrow
    mapping = detect_columns(schema.names, overrides, files[0])
    detected = dict(mapping)  # before the layout keeps one of loss_mask and response_length
    layout, notes = _check_roles(mapping, schema, files[0])
    token_columns = [mapping[r] for r in ("advantages", "loss_mask") if r in mapping and _is_list(schema.field(mapping[r]).type)]
    plans = []
    for file in files:  # each file is opened once, here, and planned while open
        parquet = first if file == files[0] else _open_nonempty(file, filesystem)
        if parquet is not first:
            _check_same_columns(file, parquet.schema_arrow, detected, overrides, files[0])
            _check_same_layout(file, parquet.schema_arrow, detected, layout, (files[0], schema))
        plans.append(_plan_file(file, parquet, mapping.get("step"), token_columns[0] if token_columns else None))
    steps = sorted(set().union(*(s for plan in plans for s in plan.row_group_steps)))
    return ParquetRollouts(path, files, mapping, layout, steps, notes, filesystem, plans, token_columns)


def _open_nonempty(file: str, filesystem: pafs.FileSystem | None) -> pq.ParquetFile:
    parquet = _open_parquet(file, filesystem)
    if parquet.metadata.num_rows == 0:
        raise AggscopeError(f"{file}: the file holds no rows")
    names = parquet.schema_arrow.names
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise AggscopeError(f"{file}: has {names.count(twice)} columns named {twice!r}; give each column its own name")
    return parquet


def _check_same_columns(
    file: str, schema: pa.Schema, mapping: Mapping[str, str], overrides: Mapping[str, str], first: str
) -> None:
    """Every file of one input gives every role the same column: a column that only some files have
    (a `step` in the second file, say) would otherwise be ignored and steps merged."""
    missing = [name for name in mapping.values() if name not in schema.names]
    if missing:
        raise AggscopeError(f"{file}: missing column {missing[0]!r} that {first} has")
    extra = {role: name for role, name in detect_columns(schema.names, overrides, file).items() if role not in mapping}
    if extra:
        role, name = next(iter(extra.items()))
        raise AggscopeError(
            f"{file}: has column {name!r} ({role}) that {first} lacks; files of one input must have the same columns"
        )


def _check_same_layout(
    file: str, schema: pa.Schema, detected: Mapping[str, str], layout: str, first: tuple[str, pa.Schema]
) -> None:
    """Every file's token columns hold what the first file's do: numbers, as lists per row or one value per row."""
    _check_roles(dict(detected), schema, file)  # numbers, and roles that can describe a batch
    for role in ("advantages", "loss_mask"):
        if role in detected and _is_list(schema.field(detected[role]).type) != _is_list(first[1].field(detected[role]).type):
            kind = "a list" if _is_list(schema.field(detected[role]).type) else "one value"
            raise AggscopeError(
                f"{file}: column {detected[role]!r} ({role}) holds {kind} per row, unlike in {first[0]}; "
                "files of one input must store it alike"
            )


def _open_parquet(path: str, filesystem: pafs.FileSystem | None) -> pq.ParquetFile:
    try:
        if filesystem is not None:
            return pq.ParquetFile(filesystem.open_input_file(path))
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and not os.path.exists(path):
            raise AggscopeError(f"{path}: no such file") from None
        if os.path.exists(path) and os.path.getsize(path) == 0:
            raise AggscopeError(f"{path}: the file is empty") from None
        raise AggscopeError(f"{path}: not a Parquet file ({_first_line(exc)})") from None


def _damage_named(path: str, group: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches``, a decoding error of the file (a corrupt page, say) named with its file and row group."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(path, group, exc) from None


def _damaged(path: str, group: int, exc: BaseException) -> AggscopeError:
    return AggscopeError(f"{path}: row group {group} cannot be decoded ({_first_line(exc)}); the file is damaged")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_list(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type))


def _check_roles(mapping: dict[str, str], schema: pa.Schema, source: str) -> tuple[str, list[str]]:
    """Decide wide or long layout and check that the roles present can describe a batch."""
    if "advantages" not in mapping:
        raise AggscopeError(
            f"{source}: no advantage column (looked for advantages, advantage; set one with --col advantages=NAME)"
        )
    notes: list[str] = []
    adv_type = schema.field(mapping["advantages"]).type
    mask_type = schema.field(mapping["loss_mask"]).type if "loss_mask" in mapping else None
    for role in ("advantages", "loss_mask"):
        if role in mapping:
            data_type = schema.field(mapping[role]).type
            inner = data_type.value_type if _is_list(data_type) else data_type
            if not (pa.types.is_floating(inner) or pa.types.is_integer(inner) or pa.types.is_boolean(inner)):
                raise AggscopeError(
                    f"{source}: column {mapping[role]!r} ({role}) has type {data_type}; expected numbers or lists of numbers"
                )
    if not _is_list(adv_type) and mask_type is not None and not _is_list(mask_type):
        if "sequence" not in mapping:
            raise AggscopeError(
                f"{source}: advantages and loss mask are one value per row (the long layout) but there is no "
                "sequence id column; set one with --col sequence=NAME"
            )
        return "long", notes
    mapping.pop("sequence", None)
    if mask_type is not None and not _is_list(mask_type):
        raise AggscopeError(f"{source}: column {mapping['loss_mask']!r} (loss mask) must hold a list per row when advantages do")
    if mask_type is None:
        if "response_length" in mapping:
            notes.append(f"no loss mask column: {mapping['response_length']!r} gives each row's loss-token count")
        elif _is_list(adv_type):
            notes.append("no loss mask column: every listed advantage is a loss token")
        else:
            raise AggscopeError(
                f"{source}: one advantage per row but no loss_mask or response_length column to say how many "
                "tokens it covers; set one with --col loss_mask=NAME or --col response_length=NAME"
            )
    else:
        mapping.pop("response_length", None)
    return "wide", notes


def _plan_file(path: str, parquet: pq.ParquetFile, step_column: str | None, token_column: str | None) -> _FilePlan:
    """Which steps each row group holds, and (from the footer) how many token entries it has."""
    metadata = parquet.metadata
    starts = tuple(int(s) for s in np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])[:-1])
    leaf = None if token_column is None else _leaf_index(metadata, token_column)
    tokens = (
        None if leaf is None else tuple(metadata.row_group(g).column(leaf).num_values for g in range(metadata.num_row_groups))
    )
    if step_column is None:
        stem = PurePosixPath(path).name.split(".")[0]
        step = step_from_name(stem)
        fixed = frozenset({0 if step is None else check_step(step, f"{path}: the step in the file name")})
        return _FilePlan(path, tuple(fixed for _ in range(metadata.num_row_groups)), starts, metadata.num_rows, tokens)
    steps = []
    for group in range(metadata.num_row_groups):
        try:
            column = parquet.read_row_group(group, columns=[step_column]).column(0)
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(path, group, exc) from None
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise AggscopeError(f"{path}: column {step_column!r} (step) has type {column.type}; expected integers")
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + starts[group]
            raise AggscopeError(f"{path}: row {first}: column {step_column!r} (step) is null")
        values = pc.unique(column).to_numpy(zero_copy_only=False)
        if not np.all(values == np.round(values)):
            raise AggscopeError(f"{path}: column {step_column!r} (step) holds a value that is not a whole number")
        if not np.isfinite(values).all():
            raise AggscopeError(f"{path}: column {step_column!r} (step) holds an infinite value")
        steps.append(frozenset(check_step(int(v), f"{path}: column {step_column!r}") for v in values))
    return _FilePlan(path, tuple(steps), starts, metadata.num_rows, tokens)


# ---- decoding ------------------------------------------------------------------------------------
def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _list_parts(array: pa.Array, name: str, where: _RowLocator) -> tuple[pa.Array, np.ndarray]:
    """Flat values and rebased ``[n_rows + 1]`` offsets of a list column."""
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {name!r} is null")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        offsets = np.arange(len(array) + 1, dtype=np.int64) * width
        return array.flatten(), offsets
    offsets = array.offsets.to_numpy().astype(np.int64)
    return array.flatten(), offsets - offsets[0]


def _floats(array: pa.Array) -> np.ndarray:
    """Float values (float32 kept as float32); nulls become NaN."""
    if pa.types.is_float32(array.type) or pa.types.is_float64(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False))
    if pa.types.is_float16(array.type):
        return np.asarray(array.cast(pa.float32()).to_numpy(zero_copy_only=False))
    return np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False))


def _mask_values(values: pa.Array, offsets: np.ndarray, name: str, where: _RowLocator) -> np.ndarray:
    """Check a flat mask holds only 0/1 and return it as bool."""
    if values.null_count:
        token = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(offsets, token, side="right") - 1)
        raise AggscopeError(f"{where(row)}: column {name!r} holds a null at token {token - int(offsets[row])}")
    if pa.types.is_boolean(values.type):
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)
    raw = values.to_numpy(zero_copy_only=False)
    if raw.dtype.kind in "iu":
        # Seen as unsigned, a 0/1 mask has a maximum of at most 1 (negatives turn huge): one
        # pass without temporaries; a one-byte 0/1 mask then already is a valid bool array.
        unsigned = raw.view(raw.dtype.str.replace("i", "u"))
        if unsigned.size and unsigned.max() > 1:
            _bad_mask_value(raw, (raw != 0) & (raw != 1), offsets, name, where)
        return raw.view(bool) if raw.dtype.itemsize == 1 else raw != 0
    bad = (raw != 0) & (raw != 1)
    if bad.any():
        _bad_mask_value(raw, bad, offsets, name, where)
    return raw != 0


def _bad_mask_value(raw: np.ndarray, bad: np.ndarray, offsets: np.ndarray, name: str, where: _RowLocator) -> NoReturn:
    token = int(np.flatnonzero(bad)[0])
    row = int(np.searchsorted(offsets, token, side="right") - 1)
    raise AggscopeError(
        f"{where(row)}: column {name!r} holds {raw[token].item()!r} at token {token - int(offsets[row])}; a loss mask may hold only 0 and 1"
    )


def _group_ids(
    table: pa.Table, columns: Mapping[str, str], where: _RowLocator
) -> tuple[torch.Tensor | None, tuple[str, ...] | None]:
    if "uid" in columns:
        name = columns["uid"]
        array = _column(table, name)
        hashed = False
    elif "uid_text" in columns:
        name = columns["uid_text"]
        array = _column(table, name)
        hashed = True
    else:
        return None, None
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {name!r} (uid) is null")
    if _is_list(array.type) or pa.types.is_struct(array.type):
        raise AggscopeError(f"{where(0)}: column {name!r} (uid) has type {array.type}; expected strings or integers")
    encoded = array.dictionary_encode()
    codes = torch.from_numpy(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    labels = [str(v) for v in encoded.dictionary.to_pylist()]
    if hashed:
        labels = [text_uid(text) for text in labels]
    return codes, tuple(labels)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory. Arrow hands out read-only buffers; nothing in aggscope
    writes into a batch's tensors, so torch's warning about that is silenced, not the data copied."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def _rewards(table: pa.Table, columns: Mapping[str, str], where: _RowLocator) -> torch.Tensor | None:
    if "reward" not in columns:
        return None
    array = _column(table, columns["reward"])
    if _is_list(array.type):
        values, offsets = _list_parts(array, columns["reward"], where)
        per_row = np.add.reduceat(_floats(values).astype(np.float64), offsets[:-1]) if len(values) else np.zeros(len(array))
        per_row[offsets[1:] == offsets[:-1]] = np.nan
        return torch.from_numpy(per_row)
    if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type) or pa.types.is_boolean(array.type)):
        raise AggscopeError(f"{where(0)}: column {columns['reward']!r} (reward) has type {array.type}; expected numbers")
    return torch.from_numpy(_floats(array.cast(pa.float64()) if pa.types.is_boolean(array.type) else array).astype(np.float64))


def _decode_wide_tokens(
    table: pa.Table, columns: Mapping[str, str], where: _RowLocator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens of some rows of the wide layout: ``(advantages, mask bool, offsets)`` of the rows."""
    adv_name = columns["advantages"]
    adv_array = _column(table, adv_name)
    mask: np.ndarray | None = None
    if _is_list(adv_array.type):
        adv_values, offsets = _list_parts(adv_array, adv_name, where)
        advantages = _floats(adv_values)
    else:
        advantages_per_row = _floats(adv_array)
        offsets = None
    if "loss_mask" in columns:
        mask_name = columns["loss_mask"]
        mask_values, mask_offsets = _list_parts(_column(table, mask_name), mask_name, where)
        if offsets is not None and not np.array_equal(offsets, mask_offsets):
            lengths, mask_lengths = np.diff(offsets), np.diff(mask_offsets)
            row = int(np.flatnonzero(lengths != mask_lengths)[0])
            raise AggscopeError(f"{where(row)}: {adv_name!r} has {lengths[row]} values but {mask_name!r} has {mask_lengths[row]}")
        offsets = mask_offsets
        mask = _mask_values(mask_values, offsets, mask_name, where)
    elif "response_length" in columns:
        length_name = columns["response_length"]
        length_array = _column(table, length_name)
        if length_array.null_count or not pa.types.is_integer(length_array.type):
            raise AggscopeError(f"{where(0)}: column {length_name!r} (response_length) must hold integers, without nulls")
        loss_lengths = length_array.to_numpy().astype(np.int64)
        if (loss_lengths < 0).any():
            row = int(np.flatnonzero(loss_lengths < 0)[0])
            raise AggscopeError(f"{where(row)}: column {length_name!r} is negative")
        if offsets is None:
            offsets = np.concatenate([[0], np.cumsum(loss_lengths)]).astype(np.int64)
            check_fits(int(loss_lengths.sum(dtype=np.float64)), where(0), f"{length_name!r} adds up to")
            mask = np.ones(int(offsets[-1]), dtype=bool)
        else:
            listed = np.diff(offsets)
            if (loss_lengths > listed).any():
                row = int(np.flatnonzero(loss_lengths > listed)[0])
                raise AggscopeError(
                    f"{where(row)}: {length_name!r} is {loss_lengths[row]} but {adv_name!r} lists only {listed[row]} values"
                )
            position = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], listed)
            mask = position < np.repeat(loss_lengths, listed)
    assert offsets is not None and len(offsets) == table.num_rows + 1
    if mask is None:
        mask = np.ones(int(offsets[-1]), dtype=bool)
    if not _is_list(adv_array.type):
        advantages = np.repeat(advantages_per_row, np.diff(offsets))
    return advantages, mask, offsets


def _decode_long(table: pa.Table, columns: Mapping[str, str], step: int, source: str, where: _RowLocator) -> StepBatch:
    sequence = _column(table, columns["sequence"])
    if sequence.null_count:
        row = int(np.flatnonzero(sequence.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {columns['sequence']!r} (sequence id) is null")
    codes = sequence.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)  # [n_tokens]
    token_order = np.argsort(codes, kind="stable")  # tokens of sequence 0, then 1, ... in row order
    lengths = np.bincount(codes)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    first_row = token_order[offsets[:-1]]  # [n_seqs] the first token row of each sequence
    advantages = _floats(_column(table, columns["advantages"]))[token_order]
    if "loss_mask" in columns:
        mask_array = _column(table, columns["loss_mask"])
        mask = _mask_values(mask_array, np.arange(len(mask_array) + 1), columns["loss_mask"], where)[token_order]
    else:
        mask = np.ones(advantages.size, dtype=bool)
    per_sequence = table.take(pa.array(first_row))
    first_where = _RowLocator(where.paths, where.origin[first_row])
    token_groups, labels = _group_ids(table, columns, where)
    group_ids = None
    if token_groups is not None:
        # Sequences are ordered by their first row, so the first-appearance numbering of uids over
        # token rows is also their first-appearance order over sequences.
        token_uid = token_groups.numpy()[token_order]  # [n_tokens] in sequence order
        sequence_uid = token_uid[offsets[:-1]]  # [n_seqs]
        differs = token_uid != np.repeat(sequence_uid, lengths)
        if differs.any():
            token = int(np.flatnonzero(differs)[0])
            raise AggscopeError(f"{where(int(token_order[token]))}: the uid changes within one sequence")
        group_ids = torch.from_numpy(sequence_uid.copy())
    rewards = _rewards(per_sequence, columns, first_where)
    return _step_batch(step, source, advantages, mask, offsets, group_ids, labels, rewards)


def _step_batch(
    step: int,
    source: str,
    advantages: np.ndarray,
    mask: np.ndarray,
    offsets: np.ndarray,
    group_ids: torch.Tensor | None,
    labels: tuple[str, ...] | None,
    rewards: torch.Tensor | None,
) -> StepBatch:
    """The batch of decoded arrays (tensors share their memory)."""
    return StepBatch(step, _tensor(advantages), _tensor(mask), _tensor(offsets), group_ids, labels, rewards, source)
