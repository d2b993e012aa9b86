"""A Parquet input's files and columns, before any step is read (``aggscope.io.parquet`` reads the steps).

- ``open_parquet`` / ``open_nonempty``: a file opened, or one line saying why it cannot be.
- ``check_roles``: the wide or long layout the detected columns describe, or one line saying what is missing.
- ``check_same_columns`` / ``check_same_layout``: every file of an input holds the first one's columns.
- ``prompt_text_column``: the column of prompt texts the batches carry.
- ``recorded_metadata``: what ``convert`` recorded in a file's schema metadata (``aggscope.io.canonical``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggscope.errors import AggscopeError, first_line
from aggscope.io import decode
from aggscope.io.columns import METADATA_KEY, ROLE_CANDIDATES, detect_columns


def prompt_text_column(mapping: Mapping[str, str], schema: pa.Schema) -> str | None:
    """The column of prompt texts: the one uids are hashed from, else (beside a uid column) the first
    text column of a prompt-text name (``prompt``, ``input``); None when there is none."""
    if "uid_text" in mapping:
        name: str | None = mapping["uid_text"]
    elif "uid" in mapping:
        name = next((c for c in ROLE_CANDIDATES["uid_text"] if c in schema.names), None)
    else:
        return None
    return name if name is not None and decode.is_text(schema.field(name).type) else None


# What ``convert`` records (``aggscope.io.canonical``): each entry's type, for the entries read back.
_RECORDED_TYPES: dict[str, type | tuple[type, ...]] = {
    "notes": list,
    "format": str,
    "lengths_estimated": bool,
    "unrecoverable": list,
    "recorded_layout": dict,
    "recorded_layout_source": str,
}
_RECORDED_LAYOUT_FIELDS = ("mini_batch_prompts", "mini_batch_size")  # what a dump may record (``Rollouts.recorded_layout``)


def recorded_metadata(parquet: pq.ParquetFile, file: str, notes: list[str]) -> dict[str, Any]:
    """What ``convert`` recorded in the file's schema metadata (``aggscope.io.canonical``), or {}:
    a record that is not what ``convert`` writes is left out whole, with a note in ``notes`` saying so."""
    raw = (parquet.schema_arrow.metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        recorded = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than any record convert writes
        recorded = None
    well_formed = isinstance(recorded, dict) and all(
        isinstance(recorded[key], kind) for key, kind in _RECORDED_TYPES.items() if key in recorded
    )
    layout = recorded.get("recorded_layout", {}) if well_formed else {}
    layout_ok = all(
        name in _RECORDED_LAYOUT_FIELDS and isinstance(value, int) and not isinstance(value, bool) and value >= 1
        for name, value in layout.items()
    )
    if not well_formed or not layout_ok or not all(isinstance(note, str) for note in recorded.get("notes", [])):
        notes.append(f"{file}: its {METADATA_KEY.decode()!r} schema metadata is not what convert records; it was not used")
        return {}
    return dict(recorded)


def open_nonempty(file: str, filesystem: pafs.FileSystem | None) -> pq.ParquetFile:
    parquet = open_parquet(file, filesystem)
    if parquet.metadata.num_rows == 0:
        raise AggscopeError(f"{file}: the file holds no rows")
    names = parquet.schema_arrow.names
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise AggscopeError(f"{file}: has {names.count(twice)} columns named {twice!r}; give each column its own name")
    return parquet


def check_same_columns(
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


def check_same_layout(file: str, schema: pa.Schema, detected: Mapping[str, str], first: tuple[str, pa.Schema]) -> None:
    """Every file's token columns hold what the first file's do: numbers, as lists per row or one value per row."""
    check_roles(dict(detected), schema, file)  # numbers, and roles that can describe a batch
    for role in ("advantages", "loss_mask"):
        if role in detected:
            listed = decode.is_list(schema.field(detected[role]).type)
            if listed != decode.is_list(first[1].field(detected[role]).type):
                raise AggscopeError(
                    f"{file}: column {detected[role]!r} ({role}) holds {'a list' if listed else 'one value'} per row, unlike "
                    f"in {first[0]}; files of one input must store it alike"
                )


def open_parquet(path: str, filesystem: pafs.FileSystem | None) -> pq.ParquetFile:
    try:
        if filesystem is not None:
            return pq.ParquetFile(filesystem.open_input_file(path))
        return pq.ParquetFile(path)
    except UnicodeDecodeError:
        raise AggscopeError(
            f"{path}: not a Parquet file aggscope can read (a column name in its footer is not UTF-8 text)"
        ) from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and not os.path.exists(path):
            raise AggscopeError(f"{path}: no such file") from None
        if os.path.exists(path) and os.path.getsize(path) == 0:
            raise AggscopeError(f"{path}: the file is empty") from None
        raise AggscopeError(f"{path}: not a Parquet file ({first_line(exc)})") from None


def check_roles(mapping: dict[str, str], schema: pa.Schema, source: str) -> tuple[str, list[str]]:
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
            inner = data_type.value_type if decode.is_list(data_type) else data_type
            if not (pa.types.is_floating(inner) or pa.types.is_integer(inner) or pa.types.is_boolean(inner)):
                raise AggscopeError(
                    f"{source}: column {mapping[role]!r} ({role}) has type {data_type}; expected numbers or lists of numbers"
                )
    if not decode.is_list(adv_type) and mask_type is not None and not decode.is_list(mask_type):
        if "sequence" not in mapping:
            raise AggscopeError(
                f"{source}: advantages and loss mask are one value per row (the long layout) but there is no "
                "sequence id column; set one with --col sequence=NAME"
            )
        return "long", notes
    mapping.pop("sequence", None)
    if mask_type is not None and not decode.is_list(mask_type):
        raise AggscopeError(f"{source}: column {mapping['loss_mask']!r} (loss mask) must hold a list per row when advantages do")
    if mask_type is None:
        if "response_length" in mapping:
            notes.append(f"no loss mask column: {mapping['response_length']!r} gives each row's loss-token count")
        elif decode.is_list(adv_type):
            notes.append("no loss mask column: every listed advantage is a loss token")
        else:
            raise AggscopeError(
                f"{source}: one advantage per row but no loss_mask or response_length column to say how many "
                "tokens it covers; set one with --col loss_mask=NAME or --col response_length=NAME"
            )
    else:
        mapping.pop("response_length", None)
    return "wide", notes
