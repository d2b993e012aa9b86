"""Where each step of a Parquet file is: which row groups hold which steps (``plan_file``).

Opening an input (``aggscope.io.parquet.ParquetRollouts.open``) reads only each file's footer and
its step column, checked here; a step is then read from its own row groups alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggscope.core.batch import offsets_of
from aggscope.errors import AggscopeError, first_line
from aggscope.io import decode
from aggscope.io.limits import check_step
from aggscope.io.paths import step_in_name


@dataclass(frozen=True)
class FilePlan:
    """Which row groups of one file hold which steps."""

    path: str
    row_group_steps: tuple[frozenset[int], ...]
    row_group_starts: tuple[int, ...]
    num_rows: int
    row_group_tokens: tuple[int, ...] | None = None  # entries of the first token list column's leaf

    def group_rows(self, group: int) -> int:
        """The rows of row group ``group``."""
        end = self.row_group_starts[group + 1] if group + 1 < len(self.row_group_starts) else self.num_rows
        return end - self.row_group_starts[group]


def _leaf_index(metadata: pq.FileMetaData, name: str) -> int | None:
    """The Parquet leaf column of a (list) column of the Arrow schema, or None if not exactly one."""
    leaves = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path.split(".")[0] == name]
    return leaves[0] if len(leaves) == 1 else None


PLAN_ROWS = 1 << 18  # rows of the step column read per call when planning (many small row groups in one read)


def _step_chunks(parquet: pq.ParquetFile, step_column: str) -> Iterator[tuple[range, pa.Array | None]]:
    """``(row groups, their step column)`` for runs of consecutive row groups, in order.

    A run holds up to ``PLAN_ROWS`` rows (or one larger group), so a file of many small steps (one
    row group each) is planned in a few reads instead of one per group. The column is None when
    the run's read failed: its groups are then read one by one, so the error names the damaged one.
    """
    metadata = parquet.metadata
    first = 0
    while first < metadata.num_row_groups:
        last, rows = first + 1, metadata.row_group(first).num_rows
        while last < metadata.num_row_groups and rows + metadata.row_group(last).num_rows <= PLAN_ROWS:
            rows += metadata.row_group(last).num_rows
            last += 1
        try:
            column = parquet.read_row_groups(list(range(first, last)), columns=[step_column]).column(0).combine_chunks()
        except (pa.ArrowException, OSError):
            column = None
        yield range(first, last), column
        first = last


def _step_column(path: str, parquet: pq.ParquetFile, group: int, step_column: str) -> pa.Array:
    try:
        return parquet.read_row_group(group, columns=[step_column]).column(0).combine_chunks()
    except (pa.ArrowException, OSError) as exc:
        raise damaged(path, group, exc) from None


def damaged(path: str, group: int, exc: BaseException) -> AggscopeError:
    return AggscopeError(f"{path}: row group {group} cannot be decoded ({first_line(exc)}); the file is damaged")


def steps_from_names(files: Sequence[str], notes: list[str]) -> dict[str, int]:
    """Each file's step without a step column: the number in its name, or (when some name holds none)
    the file's position, with a note: files that cannot be told apart are never merged into one step."""
    numbers = [step_in_name(f) for f in files]
    if len(files) == 1 or all(n is not None for n in numbers):
        return {f: 0 if n is None else n for f, n in zip(files, numbers, strict=True)}
    notes.append("no step column, and file names hold no step numbers: steps are numbered by file order (0, 1, ...)")
    return {f: i for i, f in enumerate(files)}


def _group_steps(column: pa.Array, first_row: int, path: str, step_column: str) -> frozenset[int]:
    """The steps in one row group's step column (its first row ``first_row`` of the file), checked."""
    where = f"{path}: column {step_column!r}"
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise AggscopeError(f"{where} (step) has type {column.type}; expected integers")
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + first_row
        raise AggscopeError(f"{path}: row {first}: column {step_column!r} (step) is null")
    values = decode.numpy_of(pc.unique(column))
    if not np.all(values == np.round(values)):
        raise AggscopeError(f"{where} (step) holds a value that is not a whole number")
    if not np.isfinite(values).all():
        raise AggscopeError(f"{where} (step) holds an infinite value")
    return frozenset(check_step(int(v), where) for v in values)


def _one_step_groups(column: pa.Array, sizes: list[int], where: str) -> list[frozenset[int]] | None:
    """``_group_steps`` of consecutive row groups of ``sizes`` rows when each holds a single step and
    every value passes its checks (the usual file); None otherwise (the groups are then checked one by one)."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) or column.null_count:
        return None
    values = decode.numpy_of(column)  # [rows]
    if not (np.all(values == np.round(values)) and np.isfinite(values).all()):
        return None
    bounds = offsets_of(sizes)
    nonempty = bounds[1:] > bounds[:-1]  # [groups]
    low = np.minimum.reduceat(values, bounds[:-1][nonempty]) if values.size else values
    high = np.maximum.reduceat(values, bounds[:-1][nonempty]) if values.size else values
    if not np.array_equal(low, high):
        return None
    one_step = iter(low.tolist())
    return [frozenset({check_step(int(next(one_step)), where)}) if rows else frozenset() for rows in nonempty.tolist()]


def plan_file(
    path: str, parquet: pq.ParquetFile, step_column: str | None, token_column: str | None, name_steps: Mapping[str, int]
) -> FilePlan:
    """Which steps each row group holds, and (from the footer) how many token entries it has."""
    metadata = parquet.metadata
    starts = tuple(int(s) for s in offsets_of([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])[:-1])
    leaf = None if token_column is None else _leaf_index(metadata, token_column)
    tokens = (
        None if leaf is None else tuple(metadata.row_group(g).column(leaf).num_values for g in range(metadata.num_row_groups))
    )
    if step_column is None:
        fixed = frozenset({name_steps[path]})
        return FilePlan(path, tuple(fixed for _ in range(metadata.num_row_groups)), starts, metadata.num_rows, tokens)
    steps: list[frozenset[int]] = []
    for groups, column in _step_chunks(parquet, step_column):
        sizes = [metadata.row_group(g).num_rows for g in groups]
        if column is not None and (quick := _one_step_groups(column, sizes, f"{path}: column {step_column!r}")) is not None:
            steps += quick
            continue
        start = 0
        for group, size in zip(groups, sizes, strict=True):
            part = _step_column(path, parquet, group, step_column) if column is None else column.slice(start, size)
            steps.append(_group_steps(part, starts[group], path, step_column))
            start += size
    return FilePlan(path, tuple(steps), starts, metadata.num_rows, tokens)
