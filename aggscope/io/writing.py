"""Writing output files whole or not at all, and building Arrow list columns from flat arrays."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from aggscope.errors import AggscopeError


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it.

    The temporary name starts with a dot and ends in ``.tmp``, so no reader of a directory of
    Parquet files ever picks up a half-written file, even after the writer is killed.
    """
    final = Path(path)
    if final.is_dir():
        raise AggscopeError(f"{final}: is a directory; give a file name")
    parent = final.parent
    if not parent.exists():
        raise AggscopeError(f"{final}: the directory {parent} does not exist")
    temporary = parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield temporary
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def list_array(values: np.ndarray | pa.Array, offsets: np.ndarray) -> pa.Array:
    """A list column from flat ``values`` and ``[n_rows + 1]`` offsets (large offsets when needed)."""
    flat = values if isinstance(values, pa.Array) else pa.array(values)
    if offsets.size and int(offsets[-1]) >= 2**31 - 1:
        return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), flat)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


def refuse_to_overwrite_inputs(output: str | os.PathLike[str], inputs: list[str]) -> None:
    """Raise when an output path is one of the input files: input files are never modified."""
    target = Path(output).resolve()
    for source in inputs:
        if "://" not in source and Path(source).resolve() == target:
            raise AggscopeError(f"{output}: is one of the input files; choose another output name")
