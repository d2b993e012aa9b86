"""An independent model of how a trainer splits a step and computes its loss.

Written the way trainers write it: plain Python loops for the split, padded per-micro-batch tensors,
reductions over that micro-batch's own tensors only, and the scalars a trainer's config gives it
(global token count, sequence count, number of micro-batches, ranks, per-prompt token counts).
Nothing here imports aggscope's layout, modes or weights, so it cannot share their bugs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TrainerConfig:
    mini_batch_size: int | None = None
    mini_batch_prompts: int | None = None
    micro_batch_size: int | None = None
    dp_size: int = 1
    max_seq_len: int | None = None
    order: str = "logged"
    seed: int = 0
    composition: str = "canonical"


def trainer_order(uids: list[str], config: TrainerConfig, step: int) -> list[int]:
    n = len(uids)
    if config.order == "logged":
        return list(range(n))
    if config.order == "grouped":
        first_seen: dict[str, int] = {}
        for row, uid in enumerate(uids):
            first_seen.setdefault(uid, row)
        return sorted(range(n), key=lambda row: (first_seen[uids[row]], row))
    return [int(x) for x in np.random.default_rng([config.seed, step]).permutation(n)]


def shard(rows: list[int], dp: int) -> list[list[int]]:
    """``dp`` contiguous shards, the first ``len(rows) % dp`` one row longer."""
    shards, start = [], 0
    for rank in range(dp):
        size = len(rows) // dp + (1 if rank < len(rows) % dp else 0)
        shards.append(rows[start : start + size])
        start += size
    return shards


def micro_batches(rows: list[int], config: TrainerConfig) -> list[list[int]]:
    size = config.micro_batch_size or max(len(rows), 1)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def split_ranks_first(order: list[int], config: TrainerConfig) -> list[list[list[list[int]]]]:
    """verl's worker: each rank iterates its own shard in chunks of mini_batch_size / dp rows;
    optimizer step b trains chunk b of every rank."""
    shards = shard(order, config.dp_size)
    per_rank = (config.mini_batch_size or len(order)) // config.dp_size or 1
    chunks = [[rows[i : i + per_rank] for i in range(0, len(rows), per_rank)] for rows in shards]
    n_steps = max((len(c) for c in chunks), default=0)
    return [[micro_batches(c[b], config) if b < len(c) else [] for c in chunks] for b in range(n_steps)]


def split_rows(uids: list[str], config: TrainerConfig, step: int) -> list[list[list[list[int]]]]:
    """mini-batches -> rank shards -> micro-batches -> rows (seq_index), by plain loops."""
    order = trainer_order(uids, config, step)
    if config.composition == "ranks_first":
        return split_ranks_first(order, config)
    mini_batches: list[list[int]] = []
    if config.mini_batch_size is not None:
        for start in range(0, len(order), config.mini_batch_size):
            mini_batches.append(order[start : start + config.mini_batch_size])
    elif config.mini_batch_prompts is not None:
        current: list[int] = []
        runs_in_current = 0
        previous_uid = None
        for row in order:
            if uids[row] != previous_uid:
                if runs_in_current == config.mini_batch_prompts:
                    mini_batches.append(current)
                    current, runs_in_current = [], 0
                runs_in_current += 1
                previous_uid = uids[row]
            current.append(row)
        if current:
            mini_batches.append(current)
    else:
        mini_batches = [order] if order else []
    return [[micro_batches(rows, config) for rows in shard(rows, config.dp_size)] for rows in mini_batches]


def pad(rows: list[int], per_token: torch.Tensor) -> torch.Tensor:
    """Rows of a [n_rows, max_len] tensor, as a micro-batch tensor [len(rows), max_len]."""
    return per_token[rows]


def trainer_loss(
    mode: str,
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    uids: list[str],
    config: TrainerConfig,
    step: int = 0,
    lengths: list[int] | None = None,
) -> torch.Tensor:
    """The loss a trainer back-propagates for every optimizer step of the step, summed.

    Args:
        per_token_loss: ``[n_rows, max_len]`` per-token surrogate loss ``l`` (padded).
        mask: ``[n_rows, max_len]`` float 0/1 loss mask (0 on padding).
        lengths: every row's tokens, masked ones included (the micro-batch padding of
            ``seq_mean_token_sum_norm_padded``).
    """
    dp = config.dp_size
    total = per_token_loss.new_zeros(())
    mini_batches = split_rows(uids, config, step)
    step_tokens = float(mask.sum())  # TRL's num_items_in_batch: the whole generation batch
    for shards in mini_batches:
        rows_of_mini_batch = [row for shard in shards for micro in shard for row in micro]
        # Scalars the trainer's config and its all-reduces give it for this mini-batch.
        global_tokens = float(mask[rows_of_mini_batch].sum())
        n_sequences = len(rows_of_mini_batch)
        n_nonempty = sum(1 for row in rows_of_mini_batch if float(mask[row].sum()) > 0)
        n_micro_batches = sum(len(shard) for shard in shards)
        prompt_tokens: dict[str, float] = {}
        for row in rows_of_mini_batch:
            prompt_tokens[uids[row]] = prompt_tokens.get(uids[row], 0.0) + float(mask[row].sum())
        n_prompts = len(prompt_tokens)
        for shard in shards:
            rank_loss = per_token_loss.new_zeros(())
            for micro in shard:
                loss_l = pad(micro, per_token_loss)  # [m, max_len]
                m = pad(micro, mask)  # [m, max_len]
                if mode == "token_mean":
                    micro_loss = (loss_l * m).sum() / max(global_tokens, 1.0) * dp
                elif mode == "token_mean_legacy":
                    micro_loss = (loss_l * m).sum() / max(float(m.sum()), 1.0) / n_micro_batches * dp
                elif mode == "token_sum":
                    micro_loss = (loss_l * m).sum() * dp
                elif mode == "sequence_mean":
                    per_seq = (loss_l * m).sum(-1) / m.sum(-1).clamp(min=1)
                    micro_loss = per_seq.sum() / n_sequences * dp
                elif mode == "sequence_mean_nonempty":  # OpenRLHF: only rows with a loss token count
                    per_seq = (loss_l * m).sum(-1) / m.sum(-1).clamp(min=1)
                    micro_loss = per_seq.sum() / max(n_nonempty, 1) * dp
                elif mode == "seq_mean_token_sum_norm_padded":  # verl: horizon = the micro-batch's padded width
                    assert lengths is not None
                    width = max(max(lengths[row] for row in micro), 1)
                    micro_loss = (loss_l * m).sum(-1).sum() / (n_sequences * width) * dp
                elif mode == "seq_mean_token_sum":
                    micro_loss = (loss_l * m).sum(-1).sum() / n_sequences * dp
                elif mode == "seq_mean_token_sum_norm":
                    assert config.max_seq_len is not None
                    micro_loss = (loss_l * m).sum(-1).sum() / (n_sequences * config.max_seq_len) * dp
                elif mode == "token_mean_generation":  # TRL dapo: tokens per optimizer step, on average
                    micro_loss = (loss_l * m).sum() / (max(step_tokens, 1.0) / len(mini_batches)) * dp
                elif mode == "prompt_mean":
                    denominators = torch.tensor([max(prompt_tokens[uids[row]], 1.0) for row in micro], dtype=loss_l.dtype)
                    micro_loss = ((loss_l * m).sum(-1) / denominators).sum() / n_prompts * dp
                else:
                    raise ValueError(mode)
                rank_loss = rank_loss + micro_loss  # gradient accumulation
            total = total + rank_loss / dp  # data-parallel gradient average
    return total
