"""Synthetic GRPO steps of any size, written straight to Parquet in bounded memory.

The same ideas as ``aggscope.samples.generate`` (prompt groups with their own difficulty, binary rewards,
long-tailed response lengths capped at a maximum, masked tool-output spans, GRPO advantages
broadcast over each response's loss tokens), but built chunk by chunk so that a step of 2e8
tokens costs about its Arrow size in memory. The schema is the sample's.

By default a step is written as ONE row group, as a trainer dumping a whole step with
``pq.write_table`` does: the hardest case for a streaming reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggscope.io.writing import list_array
from aggscope.samples.generate import grpo_advantages

CHUNK_ROWS = 4096  # rows generated at a time (bounds the generator's own temporaries)


@dataclass(frozen=True)
class SynthConfig:
    """``tokens`` tokens per step in groups of ``group_size`` responses of at most ``max_len`` tokens."""

    tokens: int
    steps: int = 1
    group_size: int = 16
    max_len: int = 8192
    median_len: int = 1200
    seed: int = 0
    row_group_rows: int | None = None  # None: one row group per step


def step_lengths(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Response lengths summing to exactly ``config.tokens`` (the last response is trimmed)."""
    mean_estimate = config.median_len * math.exp(0.7**2 / 2)
    n_rows = int(config.tokens / mean_estimate * 1.3) + config.group_size
    per_prompt_scale = np.repeat(rng.lognormal(0.0, 0.35, size=n_rows // config.group_size + 1), config.group_size)[:n_rows]
    lengths = np.floor(rng.lognormal(np.log(config.median_len * per_prompt_scale), 0.7)).astype(np.int64)
    lengths = np.clip(lengths, 16, config.max_len)
    total = np.cumsum(lengths)
    while total[-1] < config.tokens:  # rare: draw more rows
        more = np.clip(np.floor(rng.lognormal(np.log(config.median_len), 0.7, size=n_rows)), 16, config.max_len)
        lengths = np.concatenate([lengths, more.astype(np.int64)])
        total = np.cumsum(lengths)
    n_keep = int(np.searchsorted(total, config.tokens)) + 1
    lengths = lengths[:n_keep].copy()
    lengths[-1] -= int(total[n_keep - 1]) - config.tokens
    return lengths


def _token_columns(lengths: np.ndarray, adv_per_row: np.ndarray, rng: np.random.Generator) -> tuple[pa.Array, pa.Array]:
    """List columns ``advantages`` (float32) and ``loss_mask`` (int8) for a chunk of rows."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_tokens = int(offsets[-1])
    n_rows = lengths.size
    position = np.arange(n_tokens, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    has_tool = (rng.random(n_rows) < 0.3) & (lengths > 64)
    span_start = (rng.random(n_rows) * np.maximum(lengths - 48, 0) * 0.8).astype(np.int64) + 8
    span_end = span_start + rng.integers(8, 48, size=n_rows)
    in_span = (position >= np.repeat(span_start, lengths)) & (position < np.repeat(span_end, lengths))
    in_span &= np.repeat(has_tool, lengths)
    del position
    mask = (~in_span).astype(np.int8)
    advantages = np.repeat(adv_per_row.astype(np.float32), lengths) * mask
    return list_array(advantages, offsets), list_array(mask, offsets)


def step_table(config: SynthConfig, step: int) -> pa.Table:
    """One synthetic step as a table whose columns are built in chunks of ``CHUNK_ROWS`` rows."""
    rng = np.random.default_rng([config.seed, step])
    lengths = step_lengths(config, rng)
    n_rows = lengths.size
    group_of_row = np.arange(n_rows) // config.group_size
    n_groups = int(group_of_row[-1]) + 1
    p_correct = rng.beta(0.7, 0.9, size=n_groups)
    truncated = lengths >= config.max_len
    rewards = ((rng.random(n_rows) < p_correct[group_of_row]) & ~truncated).astype(np.float64)
    adv_per_row = grpo_advantages(rewards, group_of_row)
    uid_of_group = pa.array([f"s{step}-p{g}" for g in range(n_groups)], type=pa.string())
    adv_chunks, mask_chunks = [], []
    for start in range(0, n_rows, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        adv, mask = _token_columns(lengths[rows], adv_per_row[rows], rng)
        adv_chunks.append(adv)
        mask_chunks.append(mask)
    return pa.table(
        {
            "step": pa.array(np.full(n_rows, step, dtype=np.int64)),
            "uid": uid_of_group.take(pa.array(group_of_row)),
            "reward": pa.array(rewards),
            "response_length": pa.array(lengths.astype(np.int32)),
            "advantages": pa.chunked_array(adv_chunks),
            "loss_mask": pa.chunked_array(mask_chunks),
        }
    )


def write_synthetic(path: Path, config: SynthConfig) -> Path:
    """Write ``config.steps`` steps to one Parquet file, one step in memory at a time."""
    writer: pq.ParquetWriter | None = None
    try:
        for step in range(config.steps):
            table = step_table(config, step)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=config.row_group_rows or table.num_rows)
            del table
    finally:
        if writer is not None:
            writer.close()
    return path
