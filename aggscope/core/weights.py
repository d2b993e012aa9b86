"""One step's weights: every row's weight under a mode and layout, and the summaries built from it.

The weight of a loss token ``(i, t)`` is ``w_i * f[i, t]``: the row's weight under the mode (constant
over a row's loss tokens) times the batch's per-token factor ``f`` (``StepBatch.token_factor``, 1.0
where it has none: prime-rl's ``rl_weights`` under ``--use-dump-weights``). Its gradient weight is
``g[i, t] = w_i * f[i, t] * A[i, t]``. Summaries are built from per-sequence quantities
(``SequenceStats``) so no per-token array is touched after the batch is loaded, except where a
caller asks for per-token output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, ModeInputs, check_applicable, default_modes, resolve_mode_option, resolve_modes
from aggscope.core.segments import expand_to_tokens
from aggscope.core.split import Split, split_step
from aggscope.core.stack import Stack
from aggscope.core.summaries import ModeSummary, summarize, summarize_steps
from aggscope.errors import AggscopeError


@dataclass(frozen=True, eq=False)
class StepWeights:
    """The weights of one step under one mode and layout.

    Attributes:
        batch: the step.
        mode: the aggregation mode.
        layout: the trainer configuration.
        split: where every row landed.
        row_weight: ``[n_seqs]`` float64 weight ``w_i`` of row ``i``; a loss token's weight is ``w_i``
            times the batch's ``token_factor`` at it (where the batch has one).
    """

    batch: StepBatch
    mode: Mode
    layout: Layout
    split: Split
    row_weight: np.ndarray

    def token_weights(self, dtype: Any = None, rows: slice | None = None) -> Any:
        """``[n_tokens]`` weight of every token, 0 on masked tokens (of ``rows`` only, if given).

        Args:
            dtype: the result's dtype (numpy or torch; default float32).
            rows: a slice of sequences, or None for all.

        Returns:
            A torch tensor on the input's device when the batch was built from tensors, else a
            numpy array.
        """
        per_token, mask, _ = self._per_token(dtype, rows)
        per_token[~mask] = 0.0
        return self._as_output(per_token, dtype)

    def grad_weights(self, dtype: Any = None, rows: slice | None = None) -> Any:
        """``[n_tokens]`` gradient weight ``w * A`` of every token, 0 on masked tokens (of ``rows`` only, if given).

        Same arguments and result type as ``token_weights``.
        """
        per_token, mask, advantages = self._per_token(dtype, rows)
        per_token *= advantages.astype(per_token.dtype)
        per_token[~mask] = 0.0
        return self._as_output(per_token, dtype)

    def _per_token(self, dtype: Any, rows: slice | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's weight repeated over its tokens, with the mask and advantages of those tokens."""
        batch = self.batch
        first, last, _ = (rows or slice(0, batch.n_sequences)).indices(batch.n_sequences)
        offsets = batch.offsets[first : last + 1]  # [rows + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        weight = self.row_weight[first:last].astype(_host_dtype(dtype))  # [rows]
        per_token = expand_to_tokens(weight, offsets - start, stop - start)  # [tokens of rows]
        if batch.token_factor is not None:
            per_token *= batch.token_factor[start:stop].astype(per_token.dtype)  # w_i * f[i, t]
        return per_token, batch.loss_mask[start:stop], batch.advantages[start:stop]

    def _as_output(self, per_token: np.ndarray, dtype: Any) -> Any:
        """A tensor on the input's device (in ``dtype``) for a batch built from tensors, else the array."""
        device = self.batch.input_device
        if device is None:
            return per_token
        import torch  # the caller handed in tensors, so torch is loaded already

        tensor = torch.from_numpy(per_token)
        if isinstance(dtype, torch.dtype) and tensor.dtype != dtype:
            tensor = tensor.to(dtype)  # bfloat16 and float16: rounded once from float32
        return tensor if device.type == "cpu" else tensor.to(device)

    def summary(self) -> ModeSummary:
        return summarize(self.batch.stats, self.row_weight)


def split_batch(batch: StepBatch, layout: Layout, pass_index: int = 0) -> Split:
    """Where every row of the batch lands under the layout (``split_step`` with the batch's sizes),
    in pass ``pass_index`` (the passes differ only under ``layout.rank_shuffle_seed``).

    A row's sequence length, where the layout counts it (token budgets, verl's balancing), is its
    tokens in the input plus ``layout.prompt_tokens``: dumps hold the response, seldom the prompt.
    """
    if not layout.needs_lengths:
        return split_step(batch.n_sequences, batch.group_ids, layout, batch.step, pass_index=pass_index, shared=True)
    try:
        lengths = batch.stats.lengths + layout.prompt_tokens
        return split_step(batch.n_sequences, batch.group_ids, layout, batch.step, lengths, pass_index, shared=True)
    except AggscopeError as exc:  # a split by lengths fails on one step's data: say which
        raise AggscopeError(f"{batch.source} step {batch.step}: {exc.message}") from None


def compute_weights(batch: StepBatch, mode: Mode | str, layout: Layout | None = None, split: Split | None = None) -> StepWeights:
    """Weights of one step under one mode and layout.

    Args:
        batch: the step.
        mode: a ``Mode`` or any mode name or alias.
        layout: the trainer configuration (default: one mini-batch, one rank, no micro-batching).
        split: a split already computed for this batch and layout (its first pass), to share
            between modes.
    """
    layout = layout or Layout()
    (resolved,) = resolve_modes([mode]) if isinstance(mode, str) else (mode,)
    check_applicable(resolved, has_groups=batch.has_groups, max_seq_len=layout.max_seq_len, source=batch.source)
    if split is None:
        split = split_batch(batch, layout)
    return _weigh(batch, resolved, layout, split, _mode_inputs(batch, layout, split))


def _weigh(batch: StepBatch, resolved: Mode, layout: Layout, split: Split, inputs: ModeInputs) -> StepWeights:
    """``compute_weights`` of an applicable mode, the first pass's ``inputs`` built already (shared by the modes of a step)."""
    row_weight = resolved.weight(inputs)
    if layout.rank_shuffle_seed is not None and layout.passes > 1:
        # every pass draws its own mini-batches: the weight is the sum over the passes' splits
        for pass_index in range(1, layout.passes):
            row_weight = row_weight + resolved.weight(_mode_inputs(batch, layout, split_batch(batch, layout, pass_index)))
    elif layout.passes != 1:
        # every pass trains the same split with the same weights (Layout.passes): their sum
        row_weight = row_weight * float(layout.passes)
    return StepWeights(batch, resolved, layout, split, row_weight)


def weigh_modes(batch: StepBatch, modes: Sequence[Mode], layout: Layout, split: Split) -> dict[str, StepWeights]:
    """``compute_weights`` of each mode on one split (``split_batch(batch, layout)``), the modes sharing
    what they read (one ``ModeInputs``, built once)."""
    if not modes:
        return {}
    inputs = _mode_inputs(batch, layout, split)
    weights = {}
    for mode in modes:
        check_applicable(mode, has_groups=batch.has_groups, max_seq_len=layout.max_seq_len, source=batch.source)
        weights[mode.name] = _weigh(batch, mode, layout, split, inputs)
    return weights


def weigh_steps(
    batches: Sequence[StepBatch], modes: Sequence[Mode], layout: Layout, splits: Sequence[Split], stack: Stack | None = None
) -> list[dict[str, StepWeights]]:
    """``weigh_modes`` of each step (``splits``: each step's ``split_batch``), the same weights: the modes
    that stack (``Mode.stacks``) weigh every step at once on the steps stacked (``stack``, built here
    if None); the others, and a layout whose passes draw splits of their own, weigh step by step."""
    if len(batches) < 2 or (layout.rank_shuffle_seed is not None and layout.passes > 1):
        return [weigh_modes(batch, modes, layout, split) for batch, split in zip(batches, splits, strict=True)]
    for batch in batches:
        for mode in modes:
            check_applicable(mode, has_groups=batch.has_groups, max_seq_len=layout.max_seq_len, source=batch.source)
    stacked = [mode for mode in modes if mode.stacks]
    rows: dict[str, np.ndarray] = {}
    if stacked:
        stack = stack or Stack.of(batches, splits)
        inputs = _stack_inputs(stack, layout)
        for mode in stacked:
            row_weight = mode.weight(inputs)
            rows[mode.name] = row_weight * float(layout.passes) if layout.passes != 1 else row_weight
    out = []
    for index, (batch, split) in enumerate(zip(batches, splits, strict=True)):
        inputs_of_step = None
        weights = {}
        for mode in modes:
            if mode.stacks:
                assert stack is not None
                weights[mode.name] = StepWeights(batch, mode, layout, split, rows[mode.name][stack.rows(index)])
            else:
                inputs_of_step = inputs_of_step or _mode_inputs(batch, layout, split)
                weights[mode.name] = _weigh(batch, mode, layout, split, inputs_of_step)
        out.append(weights)
    return out


def _stack_inputs(stack: Stack, layout: Layout) -> ModeInputs:
    """``_mode_inputs`` of stacked steps: run-wide ids, so each step's weights are its own."""
    loss_tokens, lengths = stack.stats.loss_tokens.astype(np.float64), stack.stats.lengths.astype(np.float64)
    loss_tokens.flags.writeable = lengths.flags.writeable = False
    return ModeInputs(
        loss_tokens=loss_tokens,
        split=stack.split,
        group_ids=stack.group_ids,
        n_groups=stack.n_groups,
        max_seq_len=layout.max_seq_len,
        lengths=lengths,
    )


def _mode_inputs(batch: StepBatch, layout: Layout, split: Split) -> ModeInputs:
    """What the modes read; its arrays are read-only, so the modes of a step can share them."""
    loss_tokens, lengths = batch.stats.loss_tokens.astype(np.float64), batch.stats.lengths.astype(np.float64)
    loss_tokens.flags.writeable = lengths.flags.writeable = False
    return ModeInputs(
        loss_tokens=loss_tokens,
        split=split,
        group_ids=batch.group_ids,
        n_groups=batch.n_groups,
        max_seq_len=layout.max_seq_len,
        lengths=lengths,
    )


# ---- many steps --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSummary:
    """One step's sizes and the summary of every mode."""

    step: int
    sequences: int
    prompts: int | None
    tokens: int
    loss_tokens: int
    modes: dict[str, ModeSummary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sequences": self.sequences,
            "prompts": self.prompts,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "modes": {name: summary.to_dict() for name, summary in self.modes.items()},
        }


@dataclass(frozen=True)
class StepAnalysis:
    """One step analysed under every selected mode: the summaries and the weights behind them."""

    batch: StepBatch
    split: Split
    weights: dict[str, StepWeights]
    summary: StepSummary


def select_modes(names: Sequence[str] | None, *, has_groups: bool, layout: Layout, source: str = "input") -> list[Mode]:
    """The modes to compute: the named ones (checked to apply), or every mode that applies."""
    if not names:
        return default_modes(has_groups=has_groups, max_seq_len=layout.max_seq_len)
    modes = resolve_mode_option(names)
    for mode in modes:
        check_applicable(mode, has_groups=has_groups, max_seq_len=layout.max_seq_len, source=source)
    return modes


def analyse_step(batch: StepBatch, modes: Sequence[Mode], layout: Layout) -> StepAnalysis:
    """Weights and summaries of one step under several modes, sharing one split."""
    (analysis,) = analyse_steps([batch], modes, layout)
    return analysis


def analyse_steps(batches: Sequence[StepBatch], modes: Sequence[Mode], layout: Layout) -> list[StepAnalysis]:
    """``analyse_step`` of several steps, the same analyses: each step is split on its own, then the
    steps are weighed and summarised together (``weigh_steps``, ``summarize_steps``), so many small
    steps pay the numpy calls of their weights and summaries once."""
    splits = [split_batch(batch, layout) for batch in batches]
    weights = weigh_steps(batches, modes, layout, splits)
    summaries = summarize_steps(
        [batch.stats for batch in batches], [[result.row_weight for result in step.values()] for step in weights]
    )
    return [
        StepAnalysis(
            batch,
            split,
            step_weights,
            StepSummary(
                step=batch.step,
                sequences=batch.n_sequences,
                prompts=batch.n_groups if batch.has_groups else None,
                tokens=batch.n_tokens,
                loss_tokens=int(batch.stats.loss_tokens.sum()),
                modes=dict(zip(step_weights, step_summaries, strict=True)),
            ),
        )
        for batch, split, step_weights, step_summaries in zip(batches, splits, weights, summaries, strict=True)
    ]


def _host_dtype(dtype: Any) -> Any:
    """The numpy dtype to compute per-token results in: ``dtype`` itself, its numpy twin for a torch
    dtype (float32 for torch's half types, which numpy lacks), float32 by default."""
    if dtype is None:
        return np.float32
    if type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.")
        return np.float32 if name in ("float16", "bfloat16", "half") else np.dtype(name)
    return dtype
