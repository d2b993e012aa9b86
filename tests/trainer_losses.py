"""The trainers' own loss code run over one step, as their trainers run it: the independent side of
the preset and hook tests (the code itself is loaded from the wheels by ``framework_wheels``).

verl 0.9.1 (``verl_weights``): the step cut into ``dp`` contiguous rank shards (TransferQueue's
``BatchMeta.chunk``), each rank's mini-batches from verl's own ``make_iterator`` (seeded
``data_loader_seed + rank``), contiguous micro-batches of ``ppo_micro_batch_size_per_gpu`` rows or,
with ``use_dynamic_bsz``, verl's own ``rearrange_micro_batches`` on all ranks at once, each padded to
its longest row, and verl's own ``agg_loss`` with what the engine passes it; the ranks' losses
averaged (FSDP's gradient mean), every mini-batch of every epoch back-propagated: the gradient on
each token's loss is its weight.

SkyRL 0.4.0 (``skyrl_weights``): its own mini-batch and prompt boundaries, and each mini-batch's
advantages scaled by its own ``apply_loss_reduction_to_advantages_minibatch`` as
``_normalize_advantages`` calls it; with advantages of 1 the scaled advantage is the weight.
"""

from __future__ import annotations

import functools
import types

import torch
from framework_wheels import IndexBatch, load_skyrl, load_verl, verl_micro_batches


@functools.cache
def verl() -> types.SimpleNamespace:
    return load_verl()


def verl_weights(lengths: list[int], masks: list[list[int]], config: dict) -> list[torch.Tensor]:
    """Per-token weights of one step as verl 0.9.1 computes them (see the module docstring)."""
    code = verl()
    dp, n = config["dp"], config["n"]
    mini_rows = config["mini"] * n  # the trainer's mini_batch_size = global_batch_size
    per_gpu = mini_rows // dp
    n_rows = len(lengths)
    losses = [torch.zeros(length, dtype=torch.float64, requires_grad=True) for length in lengths]
    mask = [torch.tensor(m, dtype=torch.float64) for m in masks]
    shard = n_rows // dp
    shards = [list(range(rank * shard, (rank + 1) * shard)) for rank in range(dp)]
    chunks = [
        [
            [shards[rank][int(i)] for i in indices]
            for indices in code.tensordict_utils.make_iterator(
                IndexBatch(shard),
                per_gpu,
                epochs=config["epochs"],
                seed=config.get("seed", 42) + rank,
                dataloader_kwargs={"shuffle": config.get("shuffle", False)},
            )
        ]
        for rank in range(dp)
    ]
    for b in range(len(chunks[0])):
        tokens = sum(float(mask[row].sum()) for rank in range(dp) for row in chunks[rank][b])  # all-reduced
        total = torch.zeros((), dtype=torch.float64)
        for micros in micro_batches([chunks[rank][b] for rank in range(dp)], lengths, config):
            for micro in micros:
                width = max(lengths[row] for row in micro)
                loss_mat = torch.stack([torch.nn.functional.pad(losses[row], (0, width - lengths[row])) for row in micro])
                loss_mask = torch.stack([torch.nn.functional.pad(mask[row], (0, width - lengths[row])) for row in micro])
                loss = code.core_algos.agg_loss(
                    loss_mat,
                    loss_mask,
                    config["agg"],
                    dp_size=dp,
                    batch_num_tokens=tokens,
                    global_batch_size=mini_rows,
                    loss_scale_factor=config["scale"],
                )
                total = total + loss / dp  # DDP/FSDP average the ranks' gradients
        total.backward()
    return [loss.grad if loss.grad is not None else torch.zeros_like(loss) for loss in losses]


def micro_batches(rank_rows: list[list[int]], lengths: list[int], config: dict) -> list[list[list[int]]]:
    """Each rank's micro-batches of one mini-batch (row numbers): contiguous chunks of
    ``ppo_micro_batch_size_per_gpu`` rows, or with ``use_dynamic_bsz`` verl's own
    ``rearrange_micro_batches`` over prompt + response lengths, all ranks at once."""
    if not config.get("budget"):
        step = config["micro"]
        return [[rows[start : start + step] for start in range(0, len(rows), step)] for rows in rank_rows]
    seq_lengths = [[lengths[row] + config["prompt"] for row in rows] for rows in rank_rows]
    parts = verl_micro_batches(verl().seqlen_balancing, seq_lengths, config["budget"])
    assert not isinstance(parts, str), parts
    return [[[rows[i] for i in micro] for micro in micros] for rows, micros in zip(rank_rows, parts, strict=True)]


@functools.cache
def skyrl() -> types.SimpleNamespace:
    return load_skyrl()


def skyrl_weights(mask: torch.Tensor, uids: list[str], step: dict, *, max_seq_len: int) -> torch.Tensor:
    """``[B, R]`` weights of one step as SkyRL 0.4.0 scales it (``mask`` ``[B, R]``; ``step``: ``mini``,
    ``prompts``, ``n``, ``micro``, ``reduction``, ``epochs``)."""
    code = skyrl()
    boundaries = code.preprocess.compute_prompt_mini_batch_boundaries(uids, step["mini"], step["prompts"], False, step["n"])
    prompt_boundaries = code.preprocess.compute_prompt_boundaries(uids)
    expected = torch.zeros_like(mask)
    # SkyRL's _execute_training_step: every epoch walks the same mini-batch chunks in the same order
    for _epoch in range(step["epochs"]):
        for start, end in boundaries:
            rebased = [(s - start, e - start) for s, e in prompt_boundaries if start <= s < end]
            expected[start:end] += code.ppo_utils.apply_loss_reduction_to_advantages_minibatch(
                torch.ones_like(mask[start:end]), mask[start:end], step["reduction"], step["micro"], max_seq_len, rebased
            )
    return expected
