"""Per-token weights written to Parquet (``aggscope weights --out``), one row group per step.

One row per input sequence in input order: ``step``, ``seq_index``, ``uid`` and, for every mode,
``weight_<mode>`` and ``grad_<mode>`` (list of float32 aligned with the sequence's tokens, 0 on
masked tokens). The file appears whole when the writer closes, or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggscope.core.batch import host_array
from aggscope.core.modes import Mode
from aggscope.core.segments import segment_chunks
from aggscope.core.weights import StepAnalysis
from aggscope.errors import AggscopeError
from aggscope.io.writing import atomic_output, list_array


def weights_schema(modes: Sequence[Mode]) -> pa.Schema:
    fields = [pa.field("step", pa.int64()), pa.field("seq_index", pa.int64()), pa.field("uid", pa.string())]
    for mode in modes:
        fields.append(pa.field(f"weight_{mode.name}", pa.list_(pa.float32())))
        fields.append(pa.field(f"grad_{mode.name}", pa.list_(pa.float32())))
    return pa.schema(fields)


ROW_GROUP_TOKENS = 1 << 22  # tokens per row group of the output (bounds the memory of --out)


def weights_table(analysis: StepAnalysis, schema: pa.Schema, rows: slice | None = None) -> pa.Table:
    """The per-token weights of one analysed step (or of its ``rows``) as a table of ``schema``."""
    batch = analysis.batch
    first, last, _ = (rows or slice(0, batch.n_sequences)).indices(batch.n_sequences)
    offsets = batch.offsets[first : last + 1]
    offsets = offsets - offsets[0]
    if batch.group_ids is None or batch.uid_labels is None:
        uids = pa.nulls(last - first, pa.string())
    else:
        uids = pa.array(batch.uid_labels, type=pa.string()).take(pa.array(batch.group_ids[first:last]))
    columns: list[pa.Array] = [
        pa.array(np.full(last - first, batch.step, dtype=np.int64)),
        pa.array(np.arange(first, last, dtype=np.int64)),
        uids,
    ]
    for result in analysis.weights.values():
        columns.append(list_array(_host(result.token_weights(rows=slice(first, last))), offsets))
        columns.append(list_array(_host(result.grad_weights(rows=slice(first, last))), offsets))
    return pa.Table.from_arrays(columns, schema=schema)


def _host(per_token: Any) -> np.ndarray:
    """Per-token results as a host array (a batch built from tensors gives tensors)."""
    return np.asarray(host_array(per_token))


class WeightsParquetWriter:
    """Writes analysed steps as they come; the output file appears only on a clean close."""

    def __init__(self, path: str | os.PathLike[str], modes: Sequence[Mode]) -> None:
        self.path = Path(path)
        if self.path.suffix != ".parquet":
            raise AggscopeError(f"{self.path}: the output file must end in .parquet")
        self.schema = weights_schema(modes)
        self._stack = ExitStack()
        temporary = self._stack.enter_context(atomic_output(self.path))
        try:
            self._writer = pq.ParquetWriter(temporary, self.schema)
        except BaseException as exc:  # through atomic_output: the temporary removed, the error naming the output
            if not self._stack.__exit__(type(exc), exc, exc.__traceback__):
                raise

    def write(self, analysis: StepAnalysis) -> None:
        """Write one step as row groups of about ``ROW_GROUP_TOKENS`` tokens, one at a time."""
        offsets = analysis.batch.offsets
        for first, last in segment_chunks(offsets, ROW_GROUP_TOKENS):
            self._writer.write_table(weights_table(analysis, self.schema, slice(first, last)))

    def __enter__(self) -> WeightsParquetWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        try:
            self._writer.close()
        except BaseException as exc:  # the last pages did not fit (a full disk): reported as any write error
            if value is None:
                kind, value, traceback = type(exc), exc, exc.__traceback__
        self._stack.__exit__(kind, value, traceback)
