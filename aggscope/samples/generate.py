"""A deterministic generator of realistic GRPO rollout steps, and the bundled sample.

Each step draws prompts with their own difficulty, samples ``group_size`` responses per prompt
with binary rewards (so some groups are all-correct or all-wrong), long-tailed response lengths
capped at ``max_len`` (a capped response is truncated and scores 0), masked tool-output spans in
some responses (multi-turn rollouts), and GRPO advantages from the rewards:
``(r - mean_g) / (std_g + 1e-6)`` with the unbiased std, 0 for a zero-variance group, the raw
reward for a group of one (verl's convention), broadcast over the response's loss tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggscope.core.advantages import GRPO_EPSILON, outcome_advantages
from aggscope.io.limits import check_fits
from aggscope.io.open import SAMPLE_FILE
from aggscope.io.writing import atomic_output, list_array


@dataclass(frozen=True)
class SampleConfig:
    """What the generator makes: ``steps`` steps of ``prompts`` prompts x ``group_size`` samples."""

    steps: int = 4
    prompts: int = 32
    group_size: int = 8
    seed: int = 0
    max_len: int = 1024

    def __post_init__(self) -> None:
        # Every response has at least 8 tokens; a step's arrays take about 48 bytes per token while it is made.
        rows = self.prompts * self.group_size
        where = f"--steps {self.steps:,} --prompts {self.prompts:,} --group-size {self.group_size:,}"
        check_fits(self.steps * rows * 8, where, f"{self.steps:,} steps of {rows:,} responses hold at least", 48)


def grpo_advantages(rewards: np.ndarray, group_of_row: np.ndarray, epsilon: float = GRPO_EPSILON) -> np.ndarray:
    """GRPO outcome advantages per row, ``(r - mean_g) / (std_g + eps)`` with the unbiased std.

    A zero-variance group gets 0; a group of one gets its raw reward (mean 0, std 1, as verl).
    The estimators live in ``aggscope.core.advantages``; this is its ``grpo``.
    """
    return outcome_advantages(rewards, group_of_row, "grpo", epsilon)


def generate_step(config: SampleConfig, step: int) -> pa.Table:
    """One step of the canonical table (one row per response, prompt groups contiguous)."""
    rng = np.random.default_rng([config.seed, step])
    n_rows = config.prompts * config.group_size
    group_of_row = np.repeat(np.arange(config.prompts), config.group_size)
    p_correct = rng.beta(0.7, 0.9, size=config.prompts)
    length_scale = rng.lognormal(0.0, 0.4, size=config.prompts)
    correct = rng.random(n_rows) < p_correct[group_of_row]
    typical = np.where(correct, 180.0, 320.0) * length_scale[group_of_row]
    lengths = np.floor(rng.lognormal(np.log(typical), np.where(correct, 0.6, 0.8))).astype(np.int64)
    truncated = lengths >= config.max_len
    lengths = np.clip(lengths, 8, config.max_len)
    rewards = (correct & ~truncated).astype(np.float64)
    advantages_per_row = grpo_advantages(rewards, group_of_row)

    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_tokens = int(offsets[-1])
    position = np.arange(n_tokens) - np.repeat(offsets[:-1], lengths)  # [n_tokens] index in its row
    # Multi-turn rollouts: some responses hold one tool-output span that is not trained on.
    has_tool = (rng.random(n_rows) < 0.3) & (lengths > 64)
    span_start = (rng.random(n_rows) * (lengths - 48) * 0.8).astype(np.int64) + 8
    span_length = rng.integers(8, 48, size=n_rows)
    in_span = (
        np.repeat(has_tool, lengths)
        & (position >= np.repeat(span_start, lengths))
        & (position < np.repeat(span_start + span_length, lengths))
    )
    loss_mask = (~in_span).astype(np.int8)
    # verl multiplies the broadcast advantage by the response mask, so tool tokens carry 0.
    advantages = np.repeat(advantages_per_row, lengths).astype(np.float32) * loss_mask
    uids = [f"{value:08x}" for value in rng.integers(0, 2**32, size=config.prompts)]
    return step_table(step, [uids[g] for g in group_of_row], rewards, lengths, advantages, loss_mask, offsets)


def step_table(
    step: int,
    uids: list[str],
    rewards: np.ndarray,
    lengths: np.ndarray,
    advantages: np.ndarray,
    loss_mask: np.ndarray,
    offsets: np.ndarray,
) -> pa.Table:
    """The canonical table of one step from per-row ``[n_rows]`` and flat per-token ``[n_tokens]`` arrays."""
    return pa.table(
        {
            "step": pa.array(np.full(len(uids), step, dtype=np.int64)),
            "uid": pa.array(uids, type=pa.string()),
            "reward": pa.array(rewards),
            "response_length": pa.array(lengths.astype(np.int32)),
            "advantages": list_array(advantages.astype(np.float32), offsets),
            "loss_mask": list_array(loss_mask, offsets),
        }
    )


def write_tables(tables: list[pa.Table], path: Path) -> Path:
    """Write tables as one Parquet file, one row group each, whole or not at all."""
    with atomic_output(path) as temporary, pq.ParquetWriter(temporary, tables[0].schema, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table)
    return path


def write_sample(out_dir: Path, config: SampleConfig) -> Path:
    """Generate the sample into ``out_dir/rollouts.parquet`` (one row group per step)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_tables([generate_step(config, step) for step in range(config.steps)], out_dir / SAMPLE_FILE)
