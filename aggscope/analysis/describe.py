"""What a set of rollout batches holds: the column mapping, steps, groups and lengths (``inspect``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aggscope.core.batch import StepBatch
from aggscope.io.reader import Rollouts, unrecoverable_of

PERCENTILES = (0, 10, 25, 50, 75, 90, 99, 100)


@dataclass(frozen=True)
class StepDescription:
    """Sizes of one step.

    Attributes:
        group_sizes: ``{group size: number of prompts with that many sequences}``, or None.
        loss_tokens_percentiles: loss tokens per sequence at the percentiles in ``PERCENTILES``.
    """

    step: int
    sequences: int
    prompts: int | None
    group_sizes: dict[int, int] | None
    tokens: int
    loss_tokens: int
    loss_tokens_percentiles: dict[str, float]
    has_rewards: bool


@dataclass(frozen=True)
class RolloutsDescription:
    """What ``inspect`` shows of an input (``format``: the reader's, under the JSON key ``layout``)."""

    source: str
    files: list[str]
    format: str
    columns: dict[str, str]
    notes: list[str]
    steps: list[StepDescription] = field(default_factory=list)
    lengths_estimated: bool = False
    unrecoverable: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        doc = {("layout" if key == "format" else key): value for key, value in asdict(self).items()}
        for step in doc["steps"]:
            if step["group_sizes"] is not None:
                step["group_sizes"] = {str(k): v for k, v in step["group_sizes"].items()}
        return doc


def describe_step(batch: StepBatch) -> StepDescription:
    loss_tokens = batch.stats.loss_tokens.astype(np.float64)  # [n_seqs]
    group_sizes = None
    if batch.group_ids is not None:
        per_group = np.bincount(batch.group_ids, minlength=batch.n_groups)  # [n_groups]
        sizes, counts = np.unique(per_group, return_counts=True)
        group_sizes = {int(s): int(c) for s, c in zip(sizes.tolist(), counts.tolist(), strict=True)}
    if loss_tokens.size:
        # linear interpolation at q * (n - 1), as torch.quantile computed it before
        quantiles = np.quantile(loss_tokens, np.array([p / 100 for p in PERCENTILES], dtype=np.float64))
        percentiles = {f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles.tolist(), strict=True)}
    else:
        percentiles = {}
    return StepDescription(
        step=batch.step,
        sequences=batch.n_sequences,
        prompts=batch.n_groups if batch.has_groups else None,
        group_sizes=group_sizes,
        tokens=batch.n_tokens,
        loss_tokens=int(loss_tokens.sum()),
        loss_tokens_percentiles=percentiles,
        has_rewards=batch.rewards is not None,
    )


def describe(rollouts: Rollouts, batches: Iterable[StepBatch] | None = None) -> RolloutsDescription:
    """Read every step once and describe it (``batches``: the steps, if already being iterated)."""
    steps = []
    estimated = False
    for batch in rollouts.iter_steps() if batches is None else batches:
        steps.append(describe_step(batch))
        estimated = estimated or batch.lengths_estimated
    return RolloutsDescription(
        source=rollouts.source,
        files=list(rollouts.files),
        format=rollouts.format,
        columns=dict(rollouts.columns),
        notes=list(rollouts.notes),
        steps=steps,
        lengths_estimated=estimated,
        unrecoverable=unrecoverable_of(rollouts),
    )


@dataclass(frozen=True)
class UidOccurrence:
    """The rows of one uid in one step (``rows`` are 0-based positions in the step's input order)."""

    step: int
    rows: list[int]
    rewards: list[float | None] | None
    loss_tokens: list[int]


@dataclass(frozen=True)
class UidDescription:
    """Where a uid appears and, where the input holds it, the prompt text behind it."""

    uid: str
    text: str | None
    occurrences: list[UidOccurrence]
    lengths_estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_uid(rollouts: Rollouts, uid: str, batches: Iterable[StepBatch] | None = None) -> UidDescription:
    """Read every step once and collect the rows, rewards and loss tokens of ``uid``, and its prompt
    text as the batches carry it (``StepBatch.uid_texts``; the last step's that has one)."""
    from aggscope.errors import AggscopeError

    if not rollouts.has_groups:
        raise AggscopeError(f"{rollouts.source}: the input has no uids (set a uid column with --col uid=NAME)")
    occurrences = []
    estimated = False
    text = None
    for batch in rollouts.iter_steps() if batches is None else batches:
        estimated = estimated or batch.lengths_estimated
        if batch.uid_labels is None or uid not in batch.uid_labels or batch.group_ids is None:
            continue
        in_batch = batch.uid_text(uid)
        text = text if in_batch is None else in_batch
        code = batch.uid_labels.index(uid)
        rows = np.flatnonzero(batch.group_ids == code)  # [n_rows_of_uid]
        rewards = None
        if batch.rewards is not None:
            rewards = [value if math.isfinite(value) else None for value in batch.rewards[rows].tolist()]
        loss_tokens = batch.stats.loss_tokens[rows].tolist()
        occurrences.append(UidOccurrence(batch.step, rows.tolist(), rewards, [int(n) for n in loss_tokens]))
    if not occurrences:
        raise AggscopeError(f"{rollouts.source}: uid {uid!r} is in no step (aggscope inspect PATH --json lists the steps)")
    return UidDescription(uid, text, occurrences, estimated)
