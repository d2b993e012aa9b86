"""A per-token loss factor on the batch (prime-rl's ``rl_weights``, ``--use-dump-weights``).

prime-rl (``src/prime_rl/trainer/rl/loss.py`` ``compute_loss`` and ``train.py``, snapshot 559b447)
runs the rl loss on ``loss_mask & (rl_weights != 0)``, multiplies each token's loss term by its
weight, sums, and divides by the step's count of those tokens over every rank.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aggscope.core.batch import SequenceStats, StepBatch, sequence_stats_numpy
from aggscope.core.layout import Layout
from aggscope.core.modes import MODES
from aggscope.core.summaries import summarize
from aggscope.core.weights import compute_weights
from aggscope.errors import AggscopeError

# Two sequences, offsets [0, 3, 5]. Row 0: mask 1 1 1, A 2 2 2, f 1 0.5 0 (its last token leaves the
# mask: factor 0). Row 1: mask 0 1 , A 0 -1, f 1 2.
ADV = [2.0, 2.0, 2.0, 0.0, -1.0]
MASK = [1, 1, 1, 0, 1]
FACTOR = [1.0, 0.5, 0.0, 1.0, 2.0]
OFFSETS = [0, 3, 5]


def hand_batch() -> StepBatch:
    return StepBatch.from_flat(ADV, MASK, OFFSETS, token_factor=FACTOR)


def test_token_mean_with_rl_weights_by_hand() -> None:
    batch = hand_batch()
    # Loss tokens: mask & f != 0 -> row 0 tokens 0, 1; row 1 token 4: T = 3.
    assert batch.loss_mask.tolist() == [True, True, False, False, True]
    weights = compute_weights(batch, "token_mean")
    # w = f / T: 1/3, 0.5/3, 0 (out of the mask), 0 (masked), 2/3.
    np.testing.assert_allclose(weights.token_weights(np.float64), [1 / 3, 0.5 / 3, 0, 0, 2 / 3], rtol=1e-12)
    # g = w * A: 2/3, 1/3, 0, 0, -2/3.
    np.testing.assert_allclose(weights.grad_weights(np.float64), [2 / 3, 1 / 3, 0, 0, -2 / 3], rtol=1e-12)
    summary = weights.summary()
    assert summary.loss_tokens == 3
    # sum w = (1 + 0.5 + 2) / 3 = 7/6; sum w^2 = (1 + 0.25 + 4) / 9 = 7/12; ESS = (49/36) / (7/12) = 7/3.
    assert summary.weight_sum == pytest.approx(7 / 6, rel=1e-12)
    assert summary.ess_tokens == pytest.approx(7 / 3, rel=1e-12)
    # sum |g| = 2/3 + 1/3 + 2/3 = 5/3; positive part 1, negative part -2/3.
    assert (summary.grad_abs_sum, summary.grad_pos_sum, summary.grad_neg_sum) == pytest.approx((5 / 3, 1.0, -2 / 3), rel=1e-12)
    assert (summary.min_token_weight, summary.max_token_weight) == pytest.approx((0.5 / 3, 2 / 3), rel=1e-12)


def test_sequence_mean_sees_the_factor_and_the_smaller_mask() -> None:
    weights = compute_weights(hand_batch(), "sequence_mean")
    # N = 2; L_0 = 2 (the factor-0 token left), L_1 = 1: w_0 = 1/4, w_1 = 1/2, times f.
    np.testing.assert_allclose(weights.token_weights(np.float64), [1 / 4, 0.5 / 4, 0, 0, 2 / 2], rtol=1e-12)
    # sum w = 0.25 + 0.125 + 1 = 1.375.
    assert weights.summary().weight_sum == pytest.approx(1.375, rel=1e-12)


def test_without_a_factor_nothing_changes() -> None:
    plain = StepBatch.from_flat(ADV, MASK, OFFSETS)
    ones = StepBatch.from_flat(ADV, MASK, OFFSETS, token_factor=[1.0] * 5)
    for mode in MODES:
        if mode in ("prompt_mean",):
            continue
        layout = Layout(max_seq_len=4)
        a, b = compute_weights(plain, mode, layout), compute_weights(ones, mode, layout)
        assert a.summary() == b.summary()
        assert np.array_equal(a.token_weights(), b.token_weights())


def test_bad_factors_are_one_line_errors() -> None:
    with pytest.raises(AggscopeError, match=r"4 token factors for 5 tokens"):
        StepBatch.from_flat(ADV, MASK, OFFSETS, token_factor=[1.0] * 4)
    with pytest.raises(AggscopeError, match=r"token factor nan at token 2; a factor must be finite"):
        StepBatch.from_flat(ADV, MASK, OFFSETS, token_factor=[1.0, 1.0, float("nan"), 1.0, 1.0])
    batch = StepBatch.from_flat(ADV, MASK, OFFSETS)
    with pytest.raises(AggscopeError, match="a loss token has factor 0"):
        StepBatch(0, batch.advantages, batch.loss_mask, batch.offsets, token_factor=np.zeros(5))


@st.composite
def packed_steps(draw: st.DrawFn) -> dict:
    n_rows = draw(st.integers(1, 8))
    lengths = draw(st.lists(st.integers(0, 5), min_size=n_rows, max_size=n_rows))
    n = sum(lengths)
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    factor = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0]), min_size=n, max_size=n))
    adv = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=n, max_size=n))
    ranks = draw(st.integers(1, 3))
    return {"lengths": lengths, "mask": mask, "factor": factor, "adv": adv, "ranks": ranks}


def prime_rl_loss(logprobs: torch.Tensor, case: dict) -> torch.Tensor:
    """The shape of prime-rl's rl loss at ratio 1, written from its code's facts: samples packed into
    rank shards, each token's term -A * ratio times its rl weight on ``loss_mask & (w != 0)``, summed
    over each rank's micro-batches, every rank dividing by the step's count of such tokens."""
    mask = torch.tensor(case["mask"], dtype=torch.bool)
    weight = torch.tensor(case["factor"], dtype=torch.float64)
    adv = torch.tensor(case["adv"], dtype=torch.float64)
    rl_mask = mask & (weight != 0)
    rl_scale = max(int(rl_mask.sum()), 1)  # all-reduced over ranks, clamped at 1
    ratio = torch.exp(logprobs - logprobs.detach())
    total = logprobs.sum() * 0.0
    for shard in torch.arange(logprobs.numel()).tensor_split(case["ranks"]):  # any packing: a sum
        term = -adv[shard] * ratio[shard] * weight[shard]
        total = total + term[rl_mask[shard]].sum() / rl_scale
    return total


@settings(max_examples=60, deadline=None)
@given(packed_steps())
def test_token_mean_with_rl_weights_is_prime_rls_gradient(case: dict) -> None:
    logprobs = torch.zeros(sum(case["lengths"]), dtype=torch.float64, requires_grad=True)
    prime_rl_loss(logprobs, case).backward()
    offsets = np.concatenate([[0], np.cumsum(case["lengths"])]).astype(np.int64)
    batch = StepBatch.from_flat(np.array(case["adv"], dtype=np.float64), case["mask"], offsets, token_factor=case["factor"])
    grad = compute_weights(batch, "token_mean").grad_weights(np.float64)
    # d loss / d logprob = -w * f * A: the engine's gradient weight with the sign of a loss.
    np.testing.assert_allclose(grad, -logprobs.grad.numpy(), rtol=1e-12, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(packed_steps(), st.sampled_from(["token_mean", "sequence_mean", "token_sum", "seq_mean_token_sum"]))
def test_summary_equals_sums_over_the_per_token_weights(case: dict, mode: str) -> None:
    offsets = np.concatenate([[0], np.cumsum(case["lengths"])]).astype(np.int64)
    batch = StepBatch.from_flat(np.array(case["adv"], dtype=np.float64), case["mask"], offsets, token_factor=case["factor"])
    weights = compute_weights(batch, mode)
    w = weights.token_weights(np.float64)[batch.loss_mask]  # [loss tokens] w_i * f, plain per token
    g = weights.grad_weights(np.float64)[batch.loss_mask]
    summary = weights.summary()
    assert summary.weight_sum == pytest.approx(w.sum(), rel=1e-9, abs=1e-12)
    assert summary.grad_abs_sum == pytest.approx(np.abs(g).sum(), rel=1e-9, abs=1e-12)
    assert summary.grad_pos_sum == pytest.approx(g[g > 0].sum(), rel=1e-9, abs=1e-12)
    if w.size:
        assert (summary.min_token_weight, summary.max_token_weight) == pytest.approx((w.min(), w.max()), rel=1e-12)
        assert summary.ess_tokens == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
    # The stats of parts, concatenated, are the whole step's (readers reduce parts as they decode them).
    cut = len(case["lengths"]) // 2
    t = int(offsets[cut])
    adv, mask, factor = batch.advantages, batch.loss_mask, batch.token_factor
    assert factor is not None
    parts = SequenceStats.concat(
        [
            sequence_stats_numpy(adv[:t], mask[:t], offsets[: cut + 1], factor[:t]),
            sequence_stats_numpy(adv[t:], mask[t:], offsets[cut:] - t, factor[t:]),
        ]
    )
    assert summarize(parts, weights.row_weight) == summary
