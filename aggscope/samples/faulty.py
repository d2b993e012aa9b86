"""A small GRPO sample with injected faults, for ``aggscope check`` (``aggscope sample --faults``).

It starts from the clean generator (``aggscope.samples.generate``) and injects, deterministically:

- step 0: the first two prompts get mixed rewards (1, 0, 1, 0, ...) and GRPO advantages; then a NaN
  advantage on the first loss token of prompt 0's first row, the advantages of prompt 1's first row
  zeroed by mistake (its reward is 1, its group's mean 0.5), and four tokens of prompt 0's second row
  masked after the advantage was broadcast (masked tokens that carry an advantage);
- step 1: prompt 1 keeps only its first sample (a singleton group) and prompt 2 loses its last one
  (an incomplete group); GRPO advantages are recomputed from the rewards (verl's convention: a
  group of one gets its raw reward);
- step 2: the first row of prompt 1 is moved to the end of the step (a non-contiguous uid).

The layout that goes with it, ``faulty_layout``, uses a mini-batch size of ``5 * group_size // 2``
sequences (10 for the default groups of 4), which cuts prompts; check the bundled file with
``aggscope check sample_data/faulty.parquet --mini-batch-size 10``. The zero-variance groups, the
cut prompts and the silent zero-advantage rows they cause come from the data and that layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from aggscope.core.layout import Layout
from aggscope.errors import AggscopeError
from aggscope.samples.generate import SampleConfig, generate_step, grpo_advantages, step_table, write_tables

FAULTY_FILE = "faulty.parquet"
FAULTY_CONFIG = SampleConfig(steps=3, prompts=8, group_size=4, seed=0, max_len=256)
MASKED_SPAN = (2, 6)  # tokens of the row whose mask is set to 0 after the advantage was broadcast


@dataclass(frozen=True)
class InjectedFault:
    """One injected fault: the finding it must cause, where, and what was done."""

    code: str
    step: int
    rows: tuple[int, ...]
    description: str


@dataclass
class _Step:
    """One step as editable per-row and flat per-token numpy arrays."""

    step: int
    uids: list[str]
    rewards: np.ndarray
    lengths: np.ndarray
    advantages: np.ndarray
    loss_mask: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Step:
        lengths = table.column("response_length").to_numpy().astype(np.int64)
        return cls(
            step=int(table.column("step")[0].as_py()),
            uids=table.column("uid").to_pylist(),
            rewards=table.column("reward").to_numpy().astype(np.float64),
            lengths=lengths,
            advantages=table.column("advantages").combine_chunks().flatten().to_numpy().copy(),
            loss_mask=table.column("loss_mask").combine_chunks().flatten().to_numpy().copy(),
        )

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def rows_of(self, uid: str) -> list[int]:
        return [row for row, value in enumerate(self.uids) if value == uid]

    def take(self, rows: list[int]) -> _Step:
        """The step reduced or reordered to ``rows``."""
        offsets = self.offsets
        tokens = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]).astype(np.int64)
        return _Step(
            self.step,
            [self.uids[r] for r in rows],
            self.rewards[rows],
            self.lengths[rows],
            self.advantages[tokens],
            self.loss_mask[tokens],
        )

    def regrade(self) -> None:
        """GRPO advantages from the rewards, broadcast over each row's loss tokens."""
        _, group_of_row = np.unique(np.asarray(self.uids), return_inverse=True)
        per_row = grpo_advantages(self.rewards, group_of_row)
        self.advantages = (np.repeat(per_row, self.lengths) * self.loss_mask).astype(np.float32)

    def table(self) -> pa.Table:
        return step_table(self.step, self.uids, self.rewards, self.lengths, self.advantages, self.loss_mask, self.offsets)


def faulty_layout(config: SampleConfig = FAULTY_CONFIG) -> Layout:
    """The layout that goes with the faulty sample: a mini-batch size that cuts prompts."""
    return Layout(mini_batch_size=5 * config.group_size // 2)


def generate_faulty(config: SampleConfig = FAULTY_CONFIG) -> tuple[list[pa.Table], list[InjectedFault]]:
    """The faulty steps (one table each) and the faults injected into them."""
    if config.steps < 3 or config.prompts < 3 or config.group_size < 3:
        raise AggscopeError(
            "sample --faults needs at least 3 steps, 3 prompts and a group size of 3 "
            f"(got {config.steps}, {config.prompts}, {config.group_size})"
        )
    steps = [_Step.of(generate_step(config, step)) for step in range(config.steps)]
    faults: list[InjectedFault] = []
    size = config.group_size

    first = steps[0]
    prompt0, prompt1 = first.uids[0], first.uids[size]
    for uid in (prompt0, prompt1):
        first.rewards[first.rows_of(uid)] = np.arange(size) % 2 == 0  # 1, 0, 1, 0, ...: a mixed group
    first.regrade()
    offsets = first.offsets
    nan_row, masked_row, zeroed_row = 0, 1, size
    loss_tokens = np.flatnonzero(first.loss_mask[offsets[nan_row] : offsets[nan_row + 1]])
    first.advantages[offsets[nan_row] + loss_tokens[0]] = np.nan
    faults.append(InjectedFault("nonfinite_advantage", 0, (nan_row,), "NaN advantage on the first loss token"))
    first.advantages[offsets[zeroed_row] : offsets[zeroed_row + 1]] = 0.0
    faults.append(InjectedFault("zero_advantage", 0, (zeroed_row,), "advantages zeroed; reward 1, group mean 0.5"))
    begin, end = MASKED_SPAN
    first.loss_mask[offsets[masked_row] + begin : offsets[masked_row] + end] = 0
    faults.append(InjectedFault("masked_token_advantage", 0, (masked_row,), f"tokens {begin}-{end - 1} masked, advantage kept"))

    second = steps[1]
    singleton, incomplete = second.uids[size], second.uids[2 * size]
    dropped = set(second.rows_of(singleton)[1:]) | {second.rows_of(incomplete)[-1]}
    steps[1] = second = second.take([row for row in range(len(second.uids)) if row not in dropped])
    second.regrade()
    faults.append(InjectedFault("singleton_group", 1, tuple(second.rows_of(singleton)), "a prompt with one sample"))
    faults.append(InjectedFault("incomplete_group", 1, tuple(second.rows_of(incomplete)), "a prompt that lost a sample"))

    third = steps[2]
    moved = size  # the first row of prompt 1
    steps[2] = third = third.take([row for row in range(len(third.uids)) if row != moved] + [moved])
    faults.append(
        InjectedFault("noncontiguous_uid", 2, tuple(third.rows_of(third.uids[-1])), "a row moved to the end of the step")
    )
    return [step.table() for step in steps], faults


def write_faulty_sample(out_dir: Path, config: SampleConfig = FAULTY_CONFIG) -> Path:
    """Generate the faulty sample into ``out_dir/faulty.parquet`` (one row group per step)."""
    tables, _ = generate_faulty(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_tables(tables, out_dir / FAULTY_FILE)
