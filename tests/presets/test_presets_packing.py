"""Sequence packing (NeMo-RL, prime-rl) changes no weight: proved on random packings.

Neither trainer is on PyPI, so the loss is rebuilt here from the facts read in their sources
(NeMo-RL 7ea279a, prime-rl 559b447; see the docstrings of aggscope/presets/nemo_rl.py and
prime_rl.py) and differentiated with autograd, for packings drawn at random:

- NeMo-RL: the step is cut into global batches of ``train_global_batch_size`` contiguous samples;
  each one's denominator (valid tokens, or valid samples) is counted over the whole global batch
  before any micro-batch is cut (``process_global_batch``); the batch is packed into bins (any
  partition of its samples), the bins dealt to the ranks round-robin; each bin's loss is the sum of
  its samples' ``loss_fn`` with the global denominators, multiplied by ``dp``; backward sums the
  micro-batches and the gradient is averaged over the ranks.
- prime-rl: one optimizer step; each rank's micro-batches are packed sequences, each loss is the
  masked sum divided by the step's loss tokens over all ranks (``rl_scale``), and the FSDP divide
  is undone, so gradients are summed over ranks.

The gradient of that loss with respect to a token's per-token loss is the token's weight; it is
compared with aggscope's weights under the preset, with packing on and off.
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import SAMPLE_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from aggscope.core.batch import StepBatch
from aggscope.core.weights import compute_weights
from aggscope.presets import load_setup
from aggscope.presets.apply import apply_setup

NEMO = str(SAMPLE_DATA / "nemo_rl_grpo.yaml")
PRIME = str(SAMPLE_DATA / "prime_rl_rl.toml")
NEMO_SIZES = [
    "grpo.num_prompts_per_step=4",
    "grpo.num_generations_per_prompt=4",
    "policy.train_global_batch_size=8",
    "policy.train_micro_batch_size=2",
    "cluster.gpus_per_node=2",
]


def random_step(rng: np.random.Generator, n_rows: int) -> tuple[list[int], list[np.ndarray]]:
    lengths = rng.integers(1, 7, n_rows).tolist()
    masks = [(rng.random(length) < 0.7).astype(np.float64) for length in lengths]
    # one sample dropped (NeMo-RL sample_mask 0; the nemo-rl reader zeroes its loss mask)
    masks[int(rng.integers(n_rows))][:] = 0.0
    return lengths, masks


def aggscope_weights(files: list[str], sets: list[str], lengths: list[int], masks: list[np.ndarray]) -> np.ndarray:
    applied = apply_setup(load_setup(files, sets=sets), {})
    flat = np.concatenate(masks)
    batch = StepBatch.from_flat(
        np.ones_like(flat), flat, np.cumsum([0, *lengths]), uids=[str(i // 4) for i in range(len(lengths))]
    )
    return np.asarray(compute_weights(batch, applied.setup.mode, applied.layout).token_weights(np.float64))


def random_bins(rng: np.random.Generator, rows: list[int], n_bins: int) -> list[list[int]]:
    """Any packing of ``rows`` into ``n_bins`` bins (some possibly empty: a padding micro-batch)."""
    shuffled = rng.permutation(rows).tolist()
    where = rng.integers(0, n_bins, len(shuffled))
    return [[row for row, b in zip(shuffled, where, strict=True) if b == k] for k in range(n_bins)]


def nemo_gradient(masks: list[np.ndarray], global_batch: int, dp: int, token_level: bool, rng: np.random.Generator) -> np.ndarray:
    losses = [torch.zeros(len(m), dtype=torch.float64, requires_grad=True) for m in masks]  # per-token loss l[i, t]
    mask = [torch.from_numpy(m) for m in masks]
    for start in range(0, len(masks), global_batch):
        rows = list(range(start, start + global_batch))
        valid_toks = max(sum(float(mask[i].sum()) for i in rows), 1.0)  # process_global_batch (all-reduced)
        valid_seqs = float(sum(1 for i in rows if mask[i].any()))  # sample_mask 1: every sample not dropped
        bins = random_bins(rng, rows, dp * int(rng.integers(1, 4)))
        for rank in range(dp):
            total = torch.zeros((), dtype=torch.float64)
            for packed in bins[rank::dp]:  # round-robin bins to ranks
                for i in packed:  # SequencePackingLossWrapper: loss_fn per sample, global denominators
                    if token_level:
                        total = total + (mask[i] * losses[i]).sum() / valid_toks
                    else:
                        total = total + (mask[i] * losses[i]).sum() / max(float(mask[i].sum()), 1.0) / valid_seqs
            if total.requires_grad:  # a rank with only padding bins adds no gradient
                (total * dp / dp).backward()  # x dp in the trainer, / dp by the gradient average
    return np.concatenate([loss.grad.numpy() * m for loss, m in zip(losses, masks, strict=True)])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), token_level=st.booleans())
def test_nemo_rl_packing_and_dynamic_batching_change_no_weight(seed: int, token_level: bool) -> None:
    # 16 samples a step, global batches of 8 on 2 ranks: aggscope's weights with packing on, with
    # dynamic batching, and with plain micro-batches of 2 all equal the trainer's on a random packing
    rng = np.random.default_rng(seed)
    lengths, masks = random_step(rng, 16)
    sets = [*NEMO_SIZES, f"loss_fn.token_level_loss={str(token_level).lower()}"]
    packed = aggscope_weights([NEMO], sets, lengths, masks)
    dynamic = aggscope_weights(
        [NEMO], [*sets, "policy.sequence_packing.enabled=false", "policy.dynamic_batching.enabled=true"], lengths, masks
    )
    plain = aggscope_weights([NEMO], [*sets, "policy.sequence_packing.enabled=false"], lengths, masks)
    trainer = nemo_gradient(masks, 8, 2, token_level, rng)
    np.testing.assert_allclose(packed, trainer, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(packed, dynamic)
    np.testing.assert_array_equal(packed, plain)


def test_nemo_rl_packing_hand_worked() -> None:
    # one global batch of 4 samples on one rank with 2, 0 (dropped: sample_mask 0), 3 and 1 loss tokens;
    # token level: every loss token 1 / 6 (6 valid tokens); sample level: sample i's tokens
    # 1 / (3 x L_i) (3 valid samples): 1/6, 1/9, 1/3, and the dropped one 0
    masks = [np.array([1.0, 1.0]), np.array([0.0]), np.array([1.0, 1.0, 1.0]), np.array([1.0])]
    sets = [
        "grpo.num_prompts_per_step=1",
        "grpo.num_generations_per_prompt=4",
        "policy.train_global_batch_size=4",
        "policy.train_micro_batch_size=1",
        "cluster.gpus_per_node=1",
    ]
    tokens = aggscope_weights([NEMO], sets, [2, 1, 3, 1], masks)
    np.testing.assert_allclose(tokens, [1 / 6, 1 / 6, 0, 1 / 6, 1 / 6, 1 / 6, 1 / 6], rtol=1e-12)
    samples = aggscope_weights([NEMO], [*sets, "loss_fn.token_level_loss=false"], [2, 1, 3, 1], masks)
    np.testing.assert_allclose(samples, [1 / 6, 1 / 6, 0, 1 / 9, 1 / 9, 1 / 9, 1 / 3], rtol=1e-12)


def prime_gradient(masks: list[np.ndarray], dp: int, rng: np.random.Generator) -> np.ndarray:
    losses = [torch.zeros(len(m), dtype=torch.float64, requires_grad=True) for m in masks]
    mask = [torch.from_numpy(m) for m in masks]
    rl_scale = max(sum(float(m.sum()) for m in mask), 1.0)  # train.py: loss tokens over all ranks
    bins = random_bins(rng, list(range(len(masks))), dp * int(rng.integers(1, 4)))
    for rank in range(dp):
        for packed in bins[rank::dp]:  # one packed micro-batch: loss.py compute_loss
            micro_loss = torch.zeros((), dtype=torch.float64)
            for i in packed:
                micro_loss = micro_loss + (mask[i] * losses[i]).sum()
            if micro_loss.requires_grad:  # an empty bin adds no gradient
                (micro_loss / rl_scale).backward()  # FSDP divide undone: summed over ranks
    return np.concatenate([loss.grad.numpy() * m for loss, m in zip(losses, masks, strict=True)])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), seq_len=st.sampled_from([512, 8192]))
def test_prime_rl_packing_changes_no_weight(seed: int, seq_len: int) -> None:
    rng = np.random.default_rng(seed)
    lengths, masks = random_step(rng, 12)
    sets = ["orchestrator.batch_size=12", f"seq_len={seq_len}"]
    np.testing.assert_allclose(aggscope_weights([PRIME], sets, lengths, masks), prime_gradient(masks, 4, rng), rtol=1e-12, atol=0)
