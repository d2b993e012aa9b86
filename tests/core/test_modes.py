"""Hand-worked numbers of the reference sheet, SkyRL's own unit-test numbers, and invariants."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import MODES, default_modes, resolve_mode
from aggscope.core.split import split_step
from aggscope.core.summaries import summarize
from aggscope.core.weights import analyse_step, compute_weights
from aggscope.errors import AggscopeError


def worked_example() -> StepBatch:
    # Two prompts, one mini-batch: g0 has sequences of 10 and 30 loss tokens, g1 of 5 and 15.
    lengths = [10, 30, 5, 15]
    return StepBatch.from_flat(torch.ones(60), torch.ones(60), np.cumsum([0, *lengths]), uids=["g0", "g0", "g1", "g1"])


# T = 60, N = 4, P = 2, H = 40: the table of the reference sheet, row by row.
WORKED = {
    "sequence_mean": [Fraction(1, 40), Fraction(1, 120), Fraction(1, 20), Fraction(1, 60)],
    "token_mean": [Fraction(1, 60)] * 4,
    "prompt_mean": [Fraction(1, 80), Fraction(1, 80), Fraction(1, 40), Fraction(1, 40)],  # 1/(2*40), 1/(2*20)
    "seq_mean_token_sum_norm": [Fraction(1, 160)] * 4,  # 1/(4*40)
    "seq_mean_token_sum": [Fraction(1, 4)] * 4,
    "token_sum": [Fraction(1)] * 4,
    "token_mean_legacy": [Fraction(1, 60)] * 4,  # one micro-batch: 1/(1*60)
}


@pytest.mark.parametrize("mode", list(WORKED))
def test_worked_example(mode: str) -> None:
    weights = compute_weights(worked_example(), mode, Layout(max_seq_len=40)).row_weight
    assert weights.tolist() == [float(w) for w in WORKED[mode]]


def masked_sum(advantages: list, mask: list, mode: str, layout: Layout, uids: list | None = None) -> float:
    batch = StepBatch.from_padded(torch.tensor(advantages, dtype=torch.float64), torch.tensor(mask), uids=uids)
    return float(compute_weights(batch, mode, layout).grad_weights(torch.float64).sum())


def test_skyrl_token_mean() -> None:
    # (1 + 2 + 4 + 5 + 6) / 5 = 3.6
    assert masked_sum([[1, 2, 3], [4, 5, 6]], [[1, 1, 0], [1, 1, 1]], "token_mean", Layout()) == pytest.approx(3.6, rel=1e-15)
    assert masked_sum([[1, 2, 3], [4, 5, 6]], [[0, 0, 0], [0, 0, 0]], "token_mean", Layout()) == 0.0


def test_skyrl_sequence_mean() -> None:
    # ((1 + 2) / 2 + 3 / 1) / 2 = 2.25
    assert masked_sum([[1, 2], [3, 4]], [[1, 1], [1, 0]], "sequence_mean", Layout()) == pytest.approx(2.25, rel=1e-15)


def test_skyrl_seq_mean_token_sum_norm() -> None:
    # (2 + 3 + 9) / (2 * 10) = 0.7
    result = masked_sum([[2, 3], [9, 12]], [[1, 1], [1, 0]], "seq_mean_token_sum_norm", Layout(max_seq_len=10))
    assert result == pytest.approx(0.7, rel=1e-15)


def test_skyrl_token_mean_legacy() -> None:
    # micro-batch 1: (2 + 4 + 6) / 3 = 4; micro-batch 2: (10 + 12 + 14 + 16) / 4 = 13; mean over K = 2: 8.5
    advantages = [[2, 4], [6, 8], [10, 12], [14, 16]]
    mask = [[1, 1], [1, 0], [1, 1], [1, 1]]
    assert masked_sum(advantages, mask, "token_mean_legacy", Layout(micro_batch_size=2)) == pytest.approx(8.5, rel=1e-15)


def test_skyrl_prompt_mean() -> None:
    # prompt 0: (1 + 2 + 3) / 3 = 2; prompt 1: (5 + 6 + 7 + 8) / 4 = 6.5; mean: 4.25
    advantages = [[1, 2], [3, 4], [5, 6], [7, 8]]
    mask = [[1, 1], [1, 0], [1, 1], [1, 1]]
    assert masked_sum(advantages, mask, "prompt_mean", Layout(), uids=[0, 0, 1, 1]) == pytest.approx(4.25, rel=1e-15)


def test_boundaries_per_mini_batch() -> None:
    # Rows a a | b c | c with mini-batches of 2 rows; loss tokens 1 2 | 3 0 | 4.
    batch = StepBatch.from_flat(torch.ones(10), torch.ones(10), [0, 1, 3, 6, 6, 10], uids=["a", "a", "b", "c", "c"])
    layout = Layout(mini_batch_size=2)
    w = compute_weights(batch, "prompt_mean", layout).row_weight.tolist()
    # mb 0: P=1, T_a=3 -> 1/3 each; mb 1: P=2, T_b=3 -> 1/6, T_c=0 clamped to 1 -> 1/2; mb 2: P=1, T_c=4 -> 1/4
    assert w == [1 / 3, 1 / 3, 1 / 6, 1 / 2, 1 / 4]
    seq = compute_weights(batch, "sequence_mean", layout).row_weight.tolist()
    # mb 0: 1/(2*1), 1/(2*2); mb 1: 1/(2*3) and the empty row 1/(2*1) (L clamped); mb 2: 1/(1*4)
    assert seq == [1 / 2, 1 / 4, 1 / 6, 1 / 2, 1 / 4]


def test_aliases_resolve_to_canonical_names() -> None:
    assert resolve_mode("seq-mean-token-mean").name == "sequence_mean"
    assert resolve_mode("token-mean").name == "token_mean"
    assert resolve_mode("dapo").name == "token_mean"
    assert resolve_mode("bnpo").name == "token_mean_legacy"
    assert resolve_mode("grpo").name == "sequence_mean"
    assert resolve_mode("dr_grpo").name == "seq_mean_token_sum_norm"
    assert resolve_mode("Dr-GRPO").name == "seq_mean_token_sum_norm"
    assert resolve_mode("seq-mean-token-sum-norm").name == "seq_mean_token_sum_norm"


def test_unknown_mode_lists_valid_names() -> None:
    with pytest.raises(AggscopeError, match=r"unknown mode 'nope'; valid modes: token_mean, .*prompt_mean"):
        resolve_mode("nope")


def test_default_modes_need_horizon_and_uids() -> None:
    assert [m.name for m in default_modes(has_groups=False, max_seq_len=None)] == [
        "token_mean",
        "token_mean_legacy",
        "token_sum",
        "sequence_mean",
        "seq_mean_token_sum",
    ]
    # the trainer variants are computed only when named (or chosen by a trainer preset)
    variants = {"sequence_mean_nonempty", "seq_mean_token_sum_norm_padded", "token_mean_generation"}
    assert [m.name for m in default_modes(has_groups=True, max_seq_len=100)] == [m for m in MODES if m not in variants]


def test_sequence_mean_nonempty_leaves_empty_rows_out_of_n() -> None:
    # Rows of 2, 0 and 4 loss tokens: verl's seq-mean-token-mean divides by N = 3 rows,
    # OpenRLHF's sample mode by N+ = 2 rows that have a loss token.
    batch = StepBatch.from_flat(torch.ones(7), torch.tensor([1.0, 1, 0, 1, 1, 1, 1]), [0, 2, 3, 7])
    assert compute_weights(batch, "sequence_mean", Layout()).row_weight.tolist() == [1 / 6, 1 / 3, 1 / 12]  # 1/(3 L_i)
    assert compute_weights(batch, "sequence_mean_nonempty", Layout()).row_weight.tolist()[::2] == [1 / 4, 1 / 8]  # 1/(2 L_i)


def test_padded_horizon_is_the_micro_batch_width() -> None:
    # Rows of 3, 5, 2 and 6 tokens (masked ones included), micro-batches of 2 on one rank:
    # widths 5 and 6, N = 4: w = 1/(4*5) for rows 0-1 and 1/(4*6) for rows 2-3.
    mask = torch.tensor([1.0, 1, 1, *[1, 1, 0, 0, 0], *[1, 1], *[1, 0, 1, 1, 1, 1]])
    batch = StepBatch.from_flat(torch.ones(16), mask, [0, 3, 8, 10, 16])
    weights = compute_weights(batch, "seq_mean_token_sum_norm_padded", Layout(micro_batch_size=2)).row_weight
    assert weights.tolist() == [1 / 20, 1 / 20, 1 / 24, 1 / 24]
    # one micro-batch: the step's longest row
    assert compute_weights(batch, "seq_mean_token_sum_norm_padded", Layout()).row_weight.tolist() == [1 / 24] * 4


def test_token_mean_generation_normalises_by_the_steps_tokens_per_optimizer_step() -> None:
    # TRL dapo, SPG 2 x GA: rows of 3, 1 | 4, 2 loss tokens in 2 mini-batches of 2 rows, T_s = 10:
    # every token weighs M_s / T_s = 2 / 10; mini-batch 0 sums to 4 x 0.2 = 0.8, mini-batch 1 to 1.2.
    mask = torch.ones(10)
    batch = StepBatch.from_flat(torch.ones(10), mask, [0, 3, 4, 8, 10])
    weights = compute_weights(batch, "token_mean_generation", Layout(mini_batch_size=2)).row_weight
    assert weights.tolist() == [0.2] * 4
    # one mini-batch (SPG = GA): token_mean
    same = compute_weights(batch, "token_mean_generation", Layout()).row_weight
    assert same.tolist() == compute_weights(batch, "token_mean", Layout()).row_weight.tolist() == [0.1] * 4


def test_passes_sum_the_weight_over_passes() -> None:
    batch = StepBatch.from_flat(torch.ones(4), torch.ones(4), [0, 1, 4])
    once = compute_weights(batch, "sequence_mean", Layout()).row_weight
    thrice = compute_weights(batch, "sequence_mean", Layout(passes=3)).row_weight
    assert thrice.tolist() == (3 * once).tolist() == [1.5, 0.5]  # 3 x 1 / (2 L_i)


def test_ranks_first_takes_the_bth_chunk_of_every_rank() -> None:
    # 8 rows, 2 ranks, mini-batches of 4: verl gives rank 0 rows 0-3 and rank 1 rows 4-7, and each
    # rank trains chunks of 2, so mini-batch 0 = rows 0, 1, 4, 5 and mini-batch 1 = rows 2, 3, 6, 7.
    split = split_step(8, None, Layout(mini_batch_size=4, dp_size=2, micro_batch_size=1, composition="ranks_first"), 0)
    assert split.mini_batch.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert split.rank.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert split.micro_batch.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert np.unique(split.micro_unit).size == 8
    canonical = split_step(8, None, Layout(mini_batch_size=4, dp_size=2), 0)
    assert canonical.mini_batch.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_ranks_first_token_mean_divides_by_the_mini_batch_over_ranks() -> None:
    # Loss tokens 1..8 per row; mini-batch 0 = rows 0, 1, 4, 5 holds 1 + 2 + 5 + 6 = 14 tokens,
    # mini-batch 1 = rows 2, 3, 6, 7 holds 3 + 4 + 7 + 8 = 22.
    lengths = list(range(1, 9))
    batch = StepBatch.from_flat(torch.ones(36), torch.ones(36), np.cumsum([0, *lengths]))
    layout = Layout(mini_batch_size=4, dp_size=2, composition="ranks_first")
    weights = compute_weights(batch, "token_mean", layout).row_weight.tolist()
    assert weights == [1 / 14, 1 / 14, 1 / 22, 1 / 22, 1 / 14, 1 / 14, 1 / 22, 1 / 22]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mini_batch_size": 6, "dp_size": 4}, r"needs --mini-batch-size \(6\) divisible by --dp-size \(4\)"),
        ({"mini_batch_prompts": 2}, "counts mini-batches in sequences: give --mini-batch-size"),
        ({"composition": "columns"}, "unknown composition 'columns'; valid compositions: canonical, ranks_first"),
    ],
)
def test_bad_compositions_say_what_to_change(changes: dict, message: str) -> None:
    with pytest.raises(AggscopeError, match=message):
        Layout(**{"composition": "ranks_first", **changes})


def test_modes_that_cannot_apply_say_why() -> None:
    batch = StepBatch.from_flat(torch.ones(3), torch.ones(3), [0, 1, 3])
    with pytest.raises(AggscopeError, match="--max-seq-len"):
        compute_weights(batch, "dr_grpo", Layout())
    with pytest.raises(AggscopeError, match="unavailable without a uid column"):
        compute_weights(batch, "prompt_mean", Layout())


# ---- invariants over random batches ----------------------------------------------------------------
@st.composite
def random_batch(draw: st.DrawFn, equal_lengths: bool = False) -> StepBatch:
    n_rows = draw(st.integers(1, 30))
    if equal_lengths:
        lengths = [draw(st.integers(1, 5))] * n_rows
        mask = torch.ones(sum(lengths))
    else:
        lengths = draw(st.lists(st.integers(0, 8), min_size=n_rows, max_size=n_rows))
        mask = torch.tensor(draw(st.lists(st.integers(0, 1), min_size=sum(lengths), max_size=sum(lengths))), dtype=torch.float64)
    uids = draw(st.lists(st.integers(0, 6), min_size=n_rows, max_size=n_rows))
    advantages = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=sum(lengths), max_size=sum(lengths))), dtype=torch.float64)
    return StepBatch.from_flat(advantages, mask, np.cumsum([0, *lengths]), uids=uids)


@settings(max_examples=80, deadline=None)
@given(batch=random_batch(), mini=st.none() | st.integers(1, 12), micro=st.integers(1, 6), dp=st.integers(1, 5))
def test_token_mean_ignores_micro_batches_and_ranks(batch: StepBatch, mini: int | None, micro: int, dp: int) -> None:
    plain = compute_weights(batch, "token_mean", Layout(mini_batch_size=mini)).row_weight
    split = compute_weights(batch, "token_mean", Layout(mini_batch_size=mini, micro_batch_size=micro, dp_size=dp)).row_weight
    assert np.array_equal(plain, split)


@settings(max_examples=40, deadline=None)
@given(
    batch=random_batch(),
    per_rank=st.none() | st.integers(1, 4),
    dp=st.integers(1, 3),
    passes=st.integers(1, 3),
    shuffle=st.booleans(),
)
def test_a_step_of_every_mode_equals_each_mode_alone(
    batch: StepBatch, per_rank: int | None, dp: int, passes: int, shuffle: bool
) -> None:
    # analyse_step shares one split and one set of mode inputs between the modes and summarises
    # them together; each mode's weights and summary are still those compute_weights gives alone
    # (ranks_first, which the rank shuffle needs, takes a mini-batch size divisible by the ranks)
    mini = (per_rank or 1) * dp if shuffle else None if per_rank is None else per_rank * dp
    layout = Layout(
        mini_batch_size=mini,
        dp_size=dp,
        max_seq_len=16,
        passes=passes,
        composition="ranks_first" if shuffle else "canonical",
        rank_shuffle_seed=3 if shuffle else None,
    )
    modes = default_modes(has_groups=True, max_seq_len=16)
    analysis = analyse_step(batch, modes, layout)
    for mode in modes:
        alone = compute_weights(batch, mode, layout)
        assert analysis.weights[mode.name].row_weight.tobytes() == alone.row_weight.tobytes()
        assert analysis.summary.modes[mode.name] == alone.summary()


@settings(max_examples=80, deadline=None)
@given(
    batch=random_batch(),
    mini=st.none() | st.integers(1, 12),
    micro=st.none() | st.integers(1, 6),
    dp=st.integers(1, 4),
    horizon=st.integers(1, 20),
)
def test_weight_sums_per_mini_batch(batch: StepBatch, mini: int | None, micro: int | None, dp: int, horizon: int) -> None:
    layout = Layout(mini_batch_size=mini, micro_batch_size=micro, dp_size=dp, max_seq_len=horizon)
    split = split_step(batch.n_sequences, batch.group_ids, layout, 0)
    loss_tokens = torch.from_numpy(batch.stats.loss_tokens).to(torch.float64)
    for b in range(split.n_mini_batches):
        rows = torch.from_numpy(split.mini_batch == b)
        tokens = loss_tokens[rows]
        total_tokens = float(tokens.sum())

        def weight_sum(mode: str, rows: torch.Tensor = rows, tokens: torch.Tensor = tokens) -> float:
            return float((torch.from_numpy(compute_weights(batch, mode, layout, split).row_weight)[rows] * tokens).sum())

        assert weight_sum("token_sum") == total_tokens
        assert weight_sum("seq_mean_token_sum") == pytest.approx(total_tokens / int(rows.sum()), rel=1e-12)
        assert weight_sum("seq_mean_token_sum_norm") == pytest.approx(total_tokens / int(rows.sum()) / horizon, rel=1e-12)
        if total_tokens:
            assert weight_sum("token_mean") == pytest.approx(1.0, rel=1e-12)
        if bool((tokens > 0).all()):
            assert weight_sum("sequence_mean") == pytest.approx(1.0, rel=1e-12)
        groups = torch.from_numpy(batch.group_ids)[rows]
        per_prompt = torch.zeros(int(groups.max()) + 1, dtype=torch.float64).index_add_(0, groups, tokens)
        if bool((per_prompt[torch.unique(groups)] > 0).all()):
            assert weight_sum("prompt_mean") == pytest.approx(1.0, rel=1e-12)
        units = torch.tensor(split.micro_unit)[rows]
        per_unit = torch.zeros(int(units.max()) + 1, dtype=torch.float64).index_add_(0, units, tokens)
        if bool((per_unit[torch.unique(units)] > 0).all()):
            assert weight_sum("token_mean_legacy") == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(batch=random_batch(equal_lengths=True), micro=st.integers(1, 4), dp=st.integers(1, 3), per_rank_micro=st.integers(1, 3))
def test_legacy_equals_token_mean_when_micro_batches_hold_equal_tokens(
    batch: StepBatch, micro: int, dp: int, per_rank_micro: int
) -> None:
    # Equal lengths, full masks, and a mini-batch of dp * micro * k rows: every micro-batch holds
    # micro rows of the same length, so the same number of loss tokens.
    mini = dp * micro * per_rank_micro
    if batch.n_sequences % mini:
        return
    layout = Layout(mini_batch_size=mini, micro_batch_size=micro, dp_size=dp)
    legacy = compute_weights(batch, "token_mean_legacy", layout).row_weight
    mean = compute_weights(batch, "token_mean", layout).row_weight
    assert np.array_equal(legacy, mean)


def test_legacy_differs_from_token_mean_with_unequal_micro_batches() -> None:
    # micro-batch 1 holds 1 token, micro-batch 2 holds 3: legacy gives 1/(2*1) and 1/(2*3), token_mean 1/4.
    batch = StepBatch.from_flat(torch.ones(4), torch.ones(4), [0, 1, 4])
    layout = Layout(micro_batch_size=1)
    assert compute_weights(batch, "token_mean_legacy", layout).row_weight.tolist() == [0.5, 1 / 6]
    assert compute_weights(batch, "token_mean", layout).row_weight.tolist() == [0.25, 0.25]


def test_summary_counts_and_effective_tokens() -> None:
    # Rows: [1, 0, nan] with mask [1, 1, 1]; [2, 2] masked [1, 0]; token_mean over T = 4 loss tokens.
    batch = StepBatch.from_flat(torch.tensor([1.0, 0.0, float("nan"), 2.0, 2.0]), torch.tensor([1, 1, 1, 1, 0]), [0, 3, 5])
    summary = compute_weights(batch, "token_mean", Layout()).summary()
    assert summary.loss_tokens == 4
    assert summary.weight_sum == 1.0
    assert summary.zero_grad_tokens == 1
    assert summary.nonfinite_grad_tokens == 1
    assert summary.grad_abs_sum == pytest.approx((1 + 2) / 4, rel=1e-15)  # finite gradient weights only
    assert summary.ess_tokens == pytest.approx(4.0, rel=1e-15)
    # sequence_mean: w = 1/(2*3), 1/(2*1); ESS = (3w1 + w2)^2 / (3w1^2 + w2^2) = 1 / (1/12 + 1/4) = 3
    seq = compute_weights(batch, "sequence_mean", Layout()).summary()
    assert seq.ess_tokens == pytest.approx(3.0, rel=1e-12)
    # long/short: one sequence per quarter: (1/2) / (1/6) = 3
    assert seq.long_short_ratio == pytest.approx(1 / 3, rel=1e-12)


def test_summarize_zero_weight_rows_count_every_finite_token_as_zero() -> None:
    batch = StepBatch.from_flat(torch.tensor([1.0, float("inf"), 2.0]), torch.ones(3), [0, 2, 3])
    summary = summarize(batch.stats, torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert (summary.zero_grad_tokens, summary.nonfinite_grad_tokens) == (1, 1)
