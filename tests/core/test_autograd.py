"""The engine's weights equal d(loss)/d(per-token loss) of the loss a trainer computes.

The trainer's loss comes from ``trainer_reference`` (plain loops, padded micro-batch tensors, its
own split), and autograd differentiates it; the engine is only asked for its answer at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_reference import TrainerConfig, split_rows, trainer_loss

from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import MODES
from aggscope.core.weights import compute_weights

ALL_MODES = list(MODES)


@st.composite
def batches(draw: st.DrawFn) -> dict:
    n_rows = draw(st.integers(1, 18))
    lengths = draw(st.lists(st.integers(0, 6), min_size=n_rows, max_size=n_rows))
    n_groups = draw(st.integers(1, 5))
    contiguous = draw(st.booleans())
    if contiguous:
        cuts = sorted(draw(st.lists(st.integers(1, max(n_rows - 1, 1)), max_size=n_groups - 1)))
        uids = [f"g{sum(1 for c in cuts if c <= row)}" for row in range(n_rows)]
    else:
        uids = [f"g{draw(st.integers(0, n_groups - 1))}" for _ in range(n_rows)]
    masks = [[draw(st.integers(0, 1)) if draw(st.booleans()) else 1 for _ in range(length)] for length in lengths]
    seed = draw(st.integers(0, 2**16))
    return {"lengths": lengths, "uids": uids, "masks": masks, "seed": seed}


@st.composite
def configs(draw: st.DrawFn, n_rows: int) -> TrainerConfig:
    kind = draw(st.sampled_from(["whole", "sequences", "prompts", "ranks_first"]))
    dp_size = draw(st.integers(1, 4))
    if kind == "ranks_first":  # verl: the mini-batch divides over the ranks
        mini_batch_size = dp_size * draw(st.integers(1, max(n_rows // dp_size, 1) + 1))
    else:
        mini_batch_size = draw(st.integers(1, n_rows + 2)) if kind == "sequences" else None
    return TrainerConfig(
        mini_batch_size=mini_batch_size,
        mini_batch_prompts=draw(st.integers(1, 4)) if kind == "prompts" else None,
        micro_batch_size=draw(st.none() | st.integers(1, 5)),
        dp_size=dp_size,
        composition="ranks_first" if kind == "ranks_first" else "canonical",
        max_seq_len=draw(st.integers(1, 12)),
        order=draw(st.sampled_from(["logged", "grouped", "shuffle"])),
        seed=draw(st.integers(0, 100)),
    )


def padded(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Random advantages and the 0/1 mask as padded [n_rows, max_len] float64 tensors."""
    rng = np.random.default_rng(data["seed"])
    width = max(max(data["lengths"], default=0), 1)
    advantages = torch.zeros(len(data["lengths"]), width, dtype=torch.float64)
    mask = torch.zeros_like(advantages)
    for row, (length, bits) in enumerate(zip(data["lengths"], data["masks"], strict=True)):
        advantages[row, :length] = torch.from_numpy(rng.normal(size=length))
        mask[row, :length] = torch.tensor(bits, dtype=torch.float64)
    return advantages, mask


def engine_batch(data: dict, advantages: torch.Tensor, mask: torch.Tensor, step: int) -> StepBatch:
    lengths = data["lengths"]
    flat_adv = torch.cat([advantages[row, :length] for row, length in enumerate(lengths)])
    flat_mask = torch.cat([mask[row, :length] for row, length in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return StepBatch.from_flat(flat_adv, flat_mask, offsets, uids=data["uids"], step=step)


def to_padded(flat: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    out = torch.zeros(len(lengths), width, dtype=flat.dtype)
    start = 0
    for row, length in enumerate(lengths):
        out[row, :length] = flat[start : start + length]
        start += length
    return out


def layout_of(config: TrainerConfig) -> Layout:
    return Layout(**vars(config))


@settings(max_examples=150, deadline=None)
@given(data=batches(), config_seed=st.data(), step=st.integers(0, 5))
def test_weights_equal_autograd_of_trainer_loss(data: dict, config_seed: st.DataObject, step: int) -> None:
    config = config_seed.draw(configs(len(data["lengths"])))
    advantages, mask = padded(data)
    batch = engine_batch(data, advantages, mask, step)
    for mode in ALL_MODES:
        per_token_loss = torch.zeros_like(advantages, requires_grad=True)
        loss = trainer_loss(mode, per_token_loss, mask, data["uids"], config, step, data["lengths"])
        (expected,) = torch.autograd.grad(loss, per_token_loss, allow_unused=True)
        expected = torch.zeros_like(advantages) if expected is None else expected * mask
        weights = compute_weights(batch, mode, layout_of(config)).token_weights(torch.float64)
        got = to_padded(weights, data["lengths"], advantages.shape[1])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15, msg=f"mode {mode}")


@settings(max_examples=60, deadline=None)
@given(data=batches(), config_seed=st.data())
def test_gradient_weights_are_minus_dloss_dlogprob(data: dict, config_seed: st.DataObject) -> None:
    """At ratio 1 the policy-gradient loss -A * ratio has d loss / d log pi = -w * A."""
    config = config_seed.draw(configs(len(data["lengths"])))
    advantages, mask = padded(data)
    batch = engine_batch(data, advantages, mask, 0)
    for mode in ALL_MODES:
        log_prob = torch.zeros_like(advantages, requires_grad=True)
        ratio = torch.exp(log_prob - log_prob.detach())
        loss = trainer_loss(mode, -advantages * ratio, mask, data["uids"], config, lengths=data["lengths"])
        (grad,) = torch.autograd.grad(loss, log_prob, allow_unused=True)
        grad = torch.zeros_like(advantages) if grad is None else grad * mask
        got = to_padded(
            compute_weights(batch, mode, layout_of(config)).grad_weights(torch.float64), data["lengths"], advantages.shape[1]
        )
        torch.testing.assert_close(got, -grad, rtol=1e-12, atol=1e-15, msg=f"mode {mode}")


def test_reference_split_rank_shards_take_extra_rows_first() -> None:
    # 7 rows over 3 ranks: sizes 3, 2, 2; micro-batches of 2 inside each shard.
    config = TrainerConfig(dp_size=3, micro_batch_size=2)
    assert split_rows(["a"] * 7, config, 0) == [[[[0, 1], [2]], [[3, 4]], [[5, 6]]]]


def test_reference_split_counts_prompts_as_runs() -> None:
    # Runs a, b, a, c with 2 prompts per mini-batch: [a a b] [a c].
    config = TrainerConfig(mini_batch_prompts=2)
    assert split_rows(["a", "a", "b", "a", "c"], config, 0) == [[[[0, 1, 2]]], [[[3, 4]]]]


# seq_mean_token_sum_norm_padded's horizon is the padded width itself: padding changes it by definition.
@pytest.mark.parametrize("mode", [m for m in ALL_MODES if m != "seq_mean_token_sum_norm_padded"])
def test_padded_constructor_matches_flat(mode: str) -> None:
    # A left-padded [B, L] batch gives the same per-token weights as its ragged form.
    advantages = torch.tensor([[0.0, 0.0, 1.0, -2.0], [0.0, 3.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    uids = ["p", "p", "q"]
    layout = Layout(max_seq_len=8, micro_batch_size=2)
    padded_batch = StepBatch.from_padded(advantages, mask, uids=uids)
    flat_batch = StepBatch.from_flat(advantages[mask.bool()], torch.ones(8), [0, 2, 4, 8], uids=uids)
    padded_weights = compute_weights(padded_batch, mode, layout).token_weights(torch.float64).view(3, 4)
    flat_weights = compute_weights(flat_batch, mode, layout).token_weights(torch.float64)
    torch.testing.assert_close(padded_weights[mask.bool()], flat_weights, rtol=0, atol=0)
    assert bool((padded_weights[~mask.bool()] == 0).all())
