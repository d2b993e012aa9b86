"""The canonical Parquet written by ``aggscope convert`` and ``aggscope.log_batch``, and read back.

One row per sequence: ``step`` (int64), ``uid`` (string, where the input has prompt groups),
``prompt`` (the prompt text, where a reader hashed uids from it), ``reward`` (float64, where
known), ``advantages`` (list of float, the batch's own float type) and ``loss_mask`` (list of
bool). What the columns cannot say travels in the file's schema metadata under ``aggscope``
(JSON): ``lengths_estimated``, ``notes``, ``format`` and ``source``; reading the file back
restores the estimate flag and the notes, so every output still says lengths are estimates.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from aggscope.core.batch import StepBatch, widen_half
from aggscope.errors import AggscopeError
from aggscope.io.columns import METADATA_KEY
from aggscope.io.reader import Rollouts
from aggscope.io.writing import atomic_output, list_array


def _float_type(tensor: torch.Tensor) -> pa.DataType:
    return pa.float64() if tensor.dtype == torch.float64 else pa.float32()


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


def canonical_table(batch: StepBatch, schema: pa.Schema | None = None, uid_texts: Mapping[str, str] | None = None) -> pa.Table:
    """One step as canonical rows, in the batch's row order (cast to ``schema`` when given)."""
    schema = schema or canonical_schema(batch, with_prompt=bool(uid_texts))
    offsets = batch.offsets.cpu().numpy()
    n_rows = batch.n_sequences
    advantages = widen_half(batch.advantages.detach().cpu())
    columns: dict[str, pa.Array] = {"step": pa.array(np.full(n_rows, batch.step, dtype=np.int64))}
    names = set(schema.names)
    if "uid" in names:
        uids = batch.row_uids()
        columns["uid"] = pa.array(uids, type=pa.string())
        if "prompt" in names:
            texts = uid_texts or {}
            columns["prompt"] = pa.array([None if u is None else texts.get(u) for u in uids], type=pa.string())
    if "reward" in names:
        rewards = None if batch.rewards is None else batch.rewards.detach().cpu().numpy()
        columns["reward"] = pa.array(rewards if rewards is not None else np.full(n_rows, np.nan), type=pa.float64())
    columns["advantages"] = list_array(advantages.numpy(), offsets)
    columns["loss_mask"] = list_array(batch.loss_mask.cpu().numpy(), offsets)
    return pa.Table.from_pydict(columns).cast(schema)


def rollouts_metadata(rollouts: Rollouts) -> dict[str, Any]:
    """What the columns cannot say, kept in the written file's schema metadata."""
    return {
        "format": rollouts.format,
        "source": str(rollouts.source),
        "lengths_estimated": rollouts.lengths_estimated,
        "notes": list(rollouts.notes),
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
    known: Mapping[str, str] | None = getattr(rollouts, "uid_texts", None)  # filled as the steps are read
    texts: Mapping[str, str] = known if known is not None else {}
    with_prompt = bool(getattr(rollouts, "texts_known", False)) and bool(rollouts.has_groups)
    steps = sequences = tokens = loss_tokens = 0
    estimated = False
    with atomic_output(path) as temporary:
        writer: pq.ParquetWriter | None = None
        try:
            for batch in rollouts.iter_steps() if batches is None else batches:
                if writer is None:
                    schema = canonical_schema(batch, with_prompt=with_prompt, metadata=metadata)
                    writer = pq.ParquetWriter(temporary, schema, compression="zstd")
                writer.write_table(canonical_table(batch, writer.schema, texts))
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


def parquet_uid_text(rollouts: Any, uid: str) -> str | None:
    """The prompt text of ``uid`` in canonical Parquet with a ``prompt``/``input`` text column."""
    from aggscope.core.batch import text_uid
    from aggscope.io.columns import ROLE_CANDIDATES

    files = [f for f in getattr(rollouts, "files", []) if os.path.isfile(f)]
    if not files:
        return None
    names = pq.read_schema(files[0]).names
    text_column = rollouts.columns.get("uid_text") or next((c for c in ROLE_CANDIDATES["uid_text"] if c in names), None)
    if text_column is None or text_column not in names:
        return None
    uid_column = rollouts.columns.get("uid")
    wanted = [text_column] if uid_column is None else [uid_column, text_column]
    for file in files:
        table = pq.read_table(file, columns=wanted)
        if uid_column is None:
            for text in table.column(text_column).unique().to_pylist():  # a loop over distinct prompt texts
                if text is not None and text_uid(text) == uid:
                    return str(text)
            continue
        hits = table.filter(pc.equal(table.column(uid_column).cast(pa.string()), uid))
        texts = [t for t in hits.column(text_column).to_pylist() if t is not None]
        if texts:
            return str(texts[0])
    return None
