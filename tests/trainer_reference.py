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


def split_rows(uids: list[str], config: TrainerConfig, step: int) -> list[list[list[list[int]]]]:
    """mini-batches -> rank shards -> micro-batches -> rows (seq_index), by plain loops."""
    order = trainer_order(uids, config, step)
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
    layout = []
    for rows in mini_batches:
        n_b = len(rows)
        shards = []
        start = 0
        for rank in range(config.dp_size):
            size = n_b // config.dp_size + (1 if rank < n_b % config.dp_size else 0)
            shard = rows[start : start + size]
            start += size
            step_size = config.micro_batch_size or max(len(shard), 1)
            shards.append([shard[i : i + step_size] for i in range(0, len(shard), step_size)])
        layout.append(shards)
    return layout


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
) -> torch.Tensor:
    """The loss a trainer back-propagates for every optimizer step of the step, summed.

    Args:
        per_token_loss: ``[n_rows, max_len]`` per-token surrogate loss ``l`` (padded).
        mask: ``[n_rows, max_len]`` float 0/1 loss mask (0 on padding).
    """
    dp = config.dp_size
    total = per_token_loss.new_zeros(())
    for shards in split_rows(uids, config, step):
        rows_of_mini_batch = [row for shard in shards for micro in shard for row in micro]
        # Scalars the trainer's config and its all-reduces give it for this mini-batch.
        global_tokens = float(mask[rows_of_mini_batch].sum())
        n_sequences = len(rows_of_mini_batch)
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
                elif mode == "seq_mean_token_sum":
                    micro_loss = (loss_l * m).sum(-1).sum() / n_sequences * dp
                elif mode == "seq_mean_token_sum_norm":
                    assert config.max_seq_len is not None
                    micro_loss = (loss_l * m).sum(-1).sum() / (n_sequences * config.max_seq_len) * dp
                elif mode == "prompt_mean":
                    denominators = torch.tensor([max(prompt_tokens[uids[row]], 1.0) for row in micro], dtype=loss_l.dtype)
                    micro_loss = ((loss_l * m).sum(-1) / denominators).sum() / n_prompts * dp
                else:
                    raise ValueError(mode)
                rank_loss = rank_loss + micro_loss  # gradient accumulation
            total = total + rank_loss / dp  # data-parallel gradient average
    return total
