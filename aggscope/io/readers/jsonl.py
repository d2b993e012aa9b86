"""Reading the fields a reader needs from a JSON-lines file, with errors that name the line.

The fast path is pyarrow's JSON reader with an explicit schema of just the needed fields (other
fields are skipped, not decoded into columns). When it fails, the file is scanned once more line by
line with the standard ``json`` module to find the first bad line and say what is wrong there
(truncated line, not an object, a field of the wrong type); that scan runs only on the error path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from aggscope.errors import AggscopeError, first_line

_MIN_BLOCK = 1 << 20
_MAX_BLOCK = 1 << 30


@dataclass(frozen=True, eq=False)
class JsonlTable:
    """The needed fields of one JSON-lines file, one table row per non-blank line."""

    path: str
    table: pa.Table

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def column(self, name: str) -> pa.Array:
        column = self.table.column(name)
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()

    @cached_property
    def _line_numbers(self) -> np.ndarray:
        with open(self.path, "rb") as handle:
            blank = [not raw.strip() for raw in handle]
        return np.flatnonzero(~np.asarray(blank, dtype=bool)) + 1

    def lines(self) -> np.ndarray:
        """``[num_rows]`` the 1-based line number of every table row."""
        return self._line_numbers

    def line(self, row: int) -> int:
        """The 1-based line number of a table row (blank lines are not rows)."""
        return int(self._line_numbers[row])

    def where(self, row: int) -> str:
        return f"{self.path}: line {self.line(row)}"

    def require(self, names: Iterable[str]) -> None:
        """One-line error at the first row where one of ``names`` is missing or null (at any depth)."""
        for name in names:
            row = first_null_row(self.column(name))
            if row is not None:
                raise AggscopeError(f"{self.where(row)}: no value for {name!r} (missing, null, or a null inside it)")


def first_null_row(array: pa.Array) -> int | None:
    """The first row holding a null, at the top level or inside its (nested) lists."""
    if array.null_count:
        return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        return None
    inner = first_null_row(array.values)
    if inner is None:
        return None
    offsets = array.offsets.to_numpy()
    return int(np.searchsorted(offsets, inner, side="right") - 1)


def read_jsonl(path: str, fields: Mapping[str, pa.DataType]) -> JsonlTable:
    """Read ``fields`` of every non-blank line of ``path``; missing fields become nulls.

    Raises:
        AggscopeError: one line naming the file and line for an empty file, a line that is not a
            JSON object (for instance cut short by a killed writer) or a field of the wrong type.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise AggscopeError(f"{path}: the file is empty")
    schema = pa.schema([pa.field(name, dtype) for name, dtype in fields.items()])
    block = min(max(size + 1, _MIN_BLOCK), _MAX_BLOCK)
    try:
        table = pajson.read_json(
            path,
            read_options=pajson.ReadOptions(block_size=block),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        for column in table.columns:  # pyarrow keeps bytes that are not UTF-8 in text columns: refuse them here
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                column.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _diagnose(path, fields, exc) from None
    if table.num_rows == 0:
        raise AggscopeError(f"{path}: the file holds no JSON lines")
    return JsonlTable(path, table)


def first_record(path: str) -> dict[str, Any]:
    """The first non-blank line as a dict (used to sniff a format and its field types)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                return _parse_line(path, number, raw)
    raise AggscopeError(f"{path}: the file holds no JSON lines")


def _parse_line(path: str, number: int, raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except RecursionError:
        raise AggscopeError(f"{path}: line {number}: JSON nested too deeply to read (more than about 1,000 levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
        else:
            detail = "not UTF-8 text"
        hint = "; the line is cut short (was the writer stopped mid-write?)" if not raw.endswith(b"\n") else ""
        raise AggscopeError(f"{path}: line {number}: not valid JSON ({detail}){hint}") from None
    if not isinstance(record, dict):
        raise AggscopeError(f"{path}: line {number}: expected one JSON object per line, got {_describe(record)}")
    return record


def _diagnose(path: str, fields: Mapping[str, pa.DataType], exc: Exception) -> AggscopeError:
    """Find the first line pyarrow could not read and say what is wrong with it."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            record = _parse_line(path, number, raw)
            for name, dtype in fields.items():
                value = record.get(name)
                problem = None if value is None else _type_problem(value, dtype)
                if problem is not None:
                    return AggscopeError(f"{path}: line {number}: field {name!r} {problem}")
    return AggscopeError(f"{path}: cannot read as JSON lines ({first_line(exc)})")


def _type_problem(value: Any, dtype: pa.DataType) -> str | None:
    """Why ``value`` does not fit ``dtype``, or None when it does."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        if not isinstance(value, list):
            return f"is {_describe(value)}; expected a list"
        for index, item in enumerate(value):
            if item is None:
                continue
            problem = _type_problem(item, dtype.value_type)
            if problem is not None:
                return f"at position {index} {problem}"
        return None
    if pa.types.is_boolean(dtype):
        return None if isinstance(value, bool) else f"is {_describe(value)}; expected true or false"
    if pa.types.is_integer(dtype):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"is {_describe(value)}; expected a whole number"
        return None if -(2**63) <= value < 2**63 else f"is {_describe(value)}; beyond 64-bit whole numbers"
    if pa.types.is_floating(dtype):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and abs(value) > 1.7976931348623157e308:
            return f"is {_describe(value)}; beyond 64-bit floats"
        return None if ok else f"is {_describe(value)}; expected a number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return None if isinstance(value, str) else f"is {_describe(value)}; expected a string"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:17] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, (int, float)):
        shown = repr(value) if len(repr(value)) <= 24 else f"{repr(value)[:12]}... ({len(repr(value))} digits)"
        return f"a number ({shown})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def sniffed_type(value: Any, name: str, path: str, *, numeric: bool) -> pa.DataType:
    """The Arrow type to read a scalar field as, judged from its value on the first line.

    ``numeric`` fields (rewards) are read as float64, or bool when the value is true/false; other
    fields (uids) as int64 or string.
    """
    if isinstance(value, bool):
        return pa.bool_()
    if numeric and isinstance(value, (int, float)):
        return pa.float64()
    if not numeric and isinstance(value, int):
        return pa.int64()
    if not numeric and isinstance(value, str):
        return pa.string()
    expected = "a number" if numeric else "a string or a whole number"
    raise AggscopeError(f"{path}: first line: field {name!r} is {_describe(value)}; expected {expected}")


def mask_type(value: object) -> pa.DataType:
    """Masks are logged as numbers or as true/false; read them as the first line has them."""
    sample = value[0] if isinstance(value, list) and value else value
    return pa.bool_() if isinstance(sample, bool) else pa.float64()


def check_same_lengths(part: JsonlTable, expected: np.ndarray, actual: np.ndarray, field: str, other: str) -> None:
    """One-line error at the first row where the list ``field`` holds another count than ``other``."""
    differs = expected != actual
    if differs.any():
        row = int(np.flatnonzero(differs)[0])
        raise AggscopeError(f"{part.where(row)}: {field!r} has {actual[row]} values but {other!r} has {expected[row]}")
