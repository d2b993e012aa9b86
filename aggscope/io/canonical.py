"""The canonical Parquet written by ``aggscope convert`` and ``aggscope.log_batch``.

One row per sequence: ``step`` (int64), ``uid`` (string, where the input has prompt groups),
``prompt`` (the prompt text, where the batches carry it: ``StepBatch.uid_texts``), ``reward``
(float64, where known), ``advantages`` (list of float, the batch's own float type) and
``loss_mask`` (list of bool). What the columns cannot say travels in the file's schema metadata
under ``aggscope`` (JSON): ``lengths_estimated``, ``notes``, ``format`` and ``source``; reading the
file back (``aggscope.io.parquet``) restores the estimate flag and the notes, so every output
still says lengths are estimates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggscope.core.batch import StepBatch, widen_half
from aggscope.errors import AggscopeError
from aggscope.io.columns import METADATA_KEY
from aggscope.io.reader import Rollouts, unrecoverable_of
from aggscope.io.writing import atomic_output, list_array


def _float_type(values: np.ndarray) -> pa.DataType:
    return pa.float64() if values.dtype == np.float64 else pa.float32()


def canonical_schema(batch: StepBatch, *, with_prompt: bool = False, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The schema of ``canonical_table(batch)``; ``metadata`` goes under the ``aggscope`` key."""
    fields = [pa.field("step", pa.int64())]
    if batch.has_groups:
        fields.append(pa.field("uid", pa.string()))
        if with_prompt:
            fields.append(pa.field("prompt", pa.string()))
    if batch.rewards is not None:
        fields.append(pa.field("reward", pa.float64()))
    fields.append(pa.field("advantages", pa.list_(_float_type(batch.advantages))))
    fields.append(pa.field("loss_mask", pa.list_(pa.bool_())))
    encoded = None if metadata is None else {METADATA_KEY: json.dumps(dict(metadata)).encode()}
    return pa.schema(fields, metadata=encoded)


def canonical_table(batch: StepBatch, schema: pa.Schema | None = None) -> pa.Table:
    """One step as canonical rows, in the batch's row order (cast to ``schema`` when given)."""
    schema = schema or canonical_schema(batch, with_prompt=batch.uid_texts is not None)
    offsets = batch.offsets
    n_rows = batch.n_sequences
    advantages = widen_half(batch.advantages)
    columns: dict[str, pa.Array] = {"step": pa.array(np.full(n_rows, batch.step, dtype=np.int64))}
    names = set(schema.names)
    if "uid" in names:
        uids = batch.row_uids()
        columns["uid"] = pa.array(uids, type=pa.string())
        if "prompt" in names:
            texts = np.full(n_rows, None, dtype=object)  # [n_seqs]
            if batch.uid_texts is not None and batch.group_ids is not None:
                texts = np.asarray(batch.uid_texts, dtype=object)[batch.group_ids]
            columns["prompt"] = pa.array(texts, type=pa.string())
    if "reward" in names:
        rewards = batch.rewards
        columns["reward"] = pa.array(rewards if rewards is not None else np.full(n_rows, np.nan), type=pa.float64())
    columns["advantages"] = list_array(advantages, offsets)
    columns["loss_mask"] = list_array(batch.loss_mask, offsets)
    return pa.Table.from_pydict(columns).cast(schema)


def rollouts_metadata(rollouts: Rollouts) -> dict[str, Any]:
    """What the columns cannot say, kept in the written file's schema metadata."""
    return {
        "format": rollouts.format,
        "source": str(rollouts.source),
        "lengths_estimated": rollouts.lengths_estimated,
        "notes": list(rollouts.notes),
        "unrecoverable": unrecoverable_of(rollouts),  # still lacking in the converted file
        # the layout the dump records (SkyRL's mini-batches), used on reading the file as on reading the dump
        **(
            {"recorded_layout": dict(rollouts.recorded_layout), "recorded_layout_source": rollouts.recorded_layout_source}
            if rollouts.recorded_layout
            else {}
        ),
    }


@dataclass(frozen=True)
class ConvertSummary:
    """What ``convert`` wrote."""

    path: str
    steps: int
    sequences: int
    tokens: int
    loss_tokens: int
    lengths_estimated: bool
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def write_canonical(
    rollouts: Rollouts, out: str | os.PathLike[str], batches: Iterable[StepBatch] | None = None
) -> ConvertSummary:
    """Write every step of ``rollouts`` to one canonical Parquet file (one row group per step).

    The file appears whole when every step was written, or not at all.
    """
    path = Path(out)
    if path.suffix != ".parquet":
        raise AggscopeError(f"{path}: the output file must end in .parquet")
    metadata = rollouts_metadata(rollouts)
    steps = sequences = tokens = loss_tokens = 0
    estimated = False
    with atomic_output(path) as temporary:
        writer: pq.ParquetWriter | None = None
        try:
            for batch in rollouts.iter_steps() if batches is None else batches:
                if writer is None:  # a prompt column where the batches carry prompt texts
                    schema = canonical_schema(batch, with_prompt=batch.uid_texts is not None, metadata=metadata)
                    writer = pq.ParquetWriter(temporary, schema, compression="zstd")
                writer.write_table(canonical_table(batch, writer.schema))
                steps += 1
                sequences += batch.n_sequences
                tokens += batch.n_tokens
                loss_tokens += int(batch.stats.loss_tokens.sum())
                estimated = estimated or batch.lengths_estimated
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise AggscopeError(f"{rollouts.source}: no steps to convert")
    return ConvertSummary(str(path), steps, sequences, tokens, loss_tokens, estimated, list(rollouts.notes))
