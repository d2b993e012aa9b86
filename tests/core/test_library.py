"""The library on trainer tensors: padded input, device placement, no hidden copies."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from dataclasses import asdict, fields

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aggscope
from aggscope.core.batch import SequenceStats, StepBatch, factorize_uids, mask_as_bool, offsets_of, uid_codes, widen_half
from aggscope.core.segments import ordered_sum, ordered_sums, padded_positions, padded_width, segment_sum
from aggscope.core.summaries import ModeSummary, long_short_ratio, summarize, summarize_modes, summarize_steps


def test_public_names_are_importable() -> None:
    for name in aggscope.__all__:
        assert getattr(aggscope, name) is not None
    with pytest.raises(AttributeError):
        aggscope.no_such_name  # noqa: B018


def test_import_aggscope_is_light() -> None:
    code = "import sys, aggscope; print(sorted(m for m in ('torch', 'pyarrow', 'pandas', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stderr


def test_padded_trainer_tensors_round_trip_to_b_by_l() -> None:
    # Right-padded [2, 4]: row 0 has 3 loss tokens, row 1 has 2; token_mean gives 1/5 each.
    advantages = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    batch = aggscope.StepBatch.from_padded(advantages, mask, uids=torch.tensor([5, 5]))
    weights = aggscope.compute_weights(batch, "token_mean")
    per_token = weights.token_weights().view(2, 4)
    assert torch.equal(per_token, torch.tensor([[0.2, 0.2, 0.2, 0.0], [0.2, 0.2, 0.0, 0.0]]))
    assert per_token.device == advantages.device and batch.input_device == advantages.device
    assert np.shares_memory(batch.advantages, advantages.numpy())  # a view, not a copy


def test_scalar_advantage_per_row_is_broadcast() -> None:
    batch = aggscope.StepBatch.from_padded(torch.tensor([2.0, -1.0]), torch.tensor([[1, 0], [1, 1]]))
    assert batch.advantages.tolist() == [2.0, 2.0, -1.0, -1.0]


def test_bad_tensor_shapes_raise_one_line_errors() -> None:
    with pytest.raises(aggscope.AggscopeError, match=r"do not match the loss mask"):
        aggscope.StepBatch.from_padded(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(aggscope.AggscopeError, match=r"loss mask holds 2"):
        aggscope.StepBatch.from_padded(torch.zeros(1, 2), torch.tensor([[1, 2]]))
    with pytest.raises(aggscope.AggscopeError, match=r"3 uids for 2 sequences"):
        aggscope.StepBatch.from_padded(torch.zeros(2, 2), torch.ones(2, 2), uids=["a", "b", "c"])
    # complex advantages: numpy would drop the imaginary part with a warning only
    with pytest.raises(aggscope.AggscopeError, match=r"advantages must be real numbers, got an array of complex128"):
        aggscope.StepBatch.from_padded(np.array([[1 + 5j, 1j]]), np.ones((1, 2)))


def test_tensor_uids_are_numbered_by_first_appearance() -> None:
    codes, labels = factorize_uids(torch.tensor([9, 3, 9, 7, 3]), 5)
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert labels == ("9", "3", "7")
    codes, labels = factorize_uids(["b", "a", "b"], 3)
    assert codes.tolist() == [0, 1, 0] and labels == ("b", "a")


UID_VALUES = st.one_of(
    st.lists(st.sampled_from(["a", "b", "ab", "", "é", "10", "9"]), max_size=30).map(lambda v: np.array(v, dtype=object)),
    st.lists(st.integers(-3, 3) | st.text(max_size=2), max_size=30).map(lambda v: np.array(v, dtype=object)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.sampled_from([0.0, -0.0, 1.5, float("nan"), -2.0, float("inf")]), max_size=30).map(np.array),
    st.lists(st.booleans(), max_size=30).map(np.array),
)


@settings(max_examples=200, deadline=None)
@given(UID_VALUES)
@example(np.array(["\x00", ""], dtype=object))  # numpy's str dtype would drop the NUL and merge the two
def test_uid_codes_number_as_arrow_dictionary_encoding_does(values: np.ndarray) -> None:
    """The numpy factoriser against the pyarrow encoding the code used before (first appearance,
    text of each value; -0.0 and 0.0 apart, every NaN one value)."""
    import pyarrow as pa

    encoded = pa.array([str(v) for v in values.tolist()] if values.dtype == object else values).dictionary_encode()
    codes, labels = uid_codes(values)
    assert codes.dtype == np.int64 and codes.tolist() == encoded.indices.to_pylist()
    assert labels == tuple(str(v) for v in encoded.dictionary.to_pylist())


def test_core_does_not_import_pyarrow() -> None:
    code = "import sys, numpy as np, aggscope.core.batch as b; b.uid_codes(np.array(['a'], dtype=object)); print('pyarrow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "False", done.stderr


def test_mask_values_other_than_zero_and_one_name_the_row_and_token() -> None:
    offsets = offsets_of([2, 0, 3])  # rows of 2, 0 and 3 tokens
    assert offsets.tolist() == [0, 2, 2, 5] and offsets.dtype == np.int64
    locate = lambda row, token: (f"row {row}: m", f"token {token}")  # noqa: E731
    assert mask_as_bool(np.array([1, 0, 1, 1, 0], dtype=np.int8), offsets, locate).tolist() == [True, False, True, True, False]
    for raw, shown in (
        (np.array([1, 0, 1, 2, 0], dtype=np.int8), "2"),
        (np.array([1, 0, 1, -1, 0]), "-1"),
        (np.array([1.0, 0, 1, 0.5, 0]), "0.5"),
    ):
        with pytest.raises(aggscope.AggscopeError) as info:
            mask_as_bool(raw, offsets, locate)
        assert info.value.message == f"row 2: m holds {shown} at token 1; a loss mask may hold only 0 and 1"


def test_prompt_texts_are_kept_per_group_last_row_first() -> None:
    batch = StepBatch.from_flat(
        [1.0] * 5, [1] * 5, [0, 1, 2, 3, 4, 5], uids=[7, 8, 7, 9, 8], prompts=["x", "y", "x2", None, None]
    )
    assert batch.uid_labels == ("7", "8", "9") and batch.uid_texts == ("x2", "y", None)
    assert batch.uid_text("7") == "x2" and batch.uid_text("9") is None and batch.uid_text("nope") is None
    assert StepBatch.from_flat([1.0], [1], [0, 1], uids=["a"]).uid_texts is None
    with pytest.raises(aggscope.AggscopeError, match="1 prompts for 2 sequences"):
        StepBatch.from_flat([1.0, 1.0], [1, 1], [0, 1, 2], uids=["a", "b"], prompts=["p"])
    with pytest.raises(aggscope.AggscopeError, match="uid texts must come one per uid label"):
        StepBatch(0, np.zeros(1), np.ones(1, dtype=bool), np.array([0, 1]), uid_texts=("p",))


def test_half_precision_widens_exactly() -> None:
    values = torch.tensor([1.5, -0.0, 65504.0, float("nan")], dtype=torch.bfloat16)
    assert widen_half(values).dtype == torch.float32 and widen_half(values).tolist()[:3] == [1.5, -0.0, 65536.0]
    assert widen_half(np.array([0.1], dtype=np.float16)).tolist() == [np.float32(np.float16(0.1))]
    same = torch.zeros(2, dtype=torch.float64)
    assert widen_half(same) is same


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_segment_sum_equals_a_loop(lengths: list[int], seed: int) -> None:
    values = np.random.default_rng(seed).normal(size=sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    loop = [float(values[offsets[i] : offsets[i + 1]].sum()) for i in range(len(lengths))]
    np.testing.assert_allclose(segment_sum(values, offsets), loop, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3000) | st.sampled_from([2**14, 2**16 + 3, 200_001]), seed=st.integers(0, 1000))
def test_ordered_sum_adds_in_torchs_order(size: int, seed: int) -> None:
    # The summaries keep the numbers torch.sum gave them (one thread, as the CLI runs it), bit for
    # bit: values of mixed magnitude make any other order differ in the last bits.
    rng = np.random.default_rng(seed)
    values = rng.normal(size=size) * rng.random(size) ** 6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = torch.from_numpy(values).sum().item()
    finally:
        torch.set_num_threads(threads)
    assert ordered_sum(values) == expected


def _torch_sum(values: np.ndarray) -> float:
    """``torch.sum`` of a float64 vector on one thread: the order ``ordered_sum`` keeps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).sum().item()
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 9),
    size=st.integers(0, 700) | st.sampled_from([2**12, 2**14 + 5, 70_001]),
    seed=st.integers(0, 1000),
)
def test_ordered_sums_add_each_row_as_torch_sums_it(rows: int, size: int, seed: int) -> None:
    # Every row of the batched sum is torch.sum of that row alone, bit for bit (mixed magnitudes,
    # so another order would show in the last bits), and the single-vector function agrees.
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, size)) * rng.random((rows, size)) ** 6
    sums = ordered_sums(values)
    assert sums.shape == (rows,) and sums.dtype == np.float64
    assert sums.tolist() == [_torch_sum(row) for row in values]
    assert sums.tolist() == [ordered_sum(row) for row in values]


def test_ordered_sums_keep_special_values_row_by_row() -> None:
    # nan, inf and -0.0 stay in their own row: torch gives nan, inf, and 0.0 (it starts from +0.0)
    values = np.array([[1.0, np.nan, 2.0, 3.0, 4.0], [np.inf, 1.0, 1.0, 1.0, 1.0], [-0.0] * 5, [1e300, 1e300, -1e300, 0.0, 0.0]])
    sums = ordered_sums(values)
    assert np.isnan(sums[0]) and sums[1] == np.inf
    assert sums[2] == 0.0 and not np.signbit(sums[2])
    assert sums[1:].tolist() == [_torch_sum(row) for row in values[1:]]


def test_ordered_sums_of_opposite_infinities_warn_no_more_than_ordered_sum() -> None:
    # inf and -inf in different lanes meet in the last additions, which ordered_sum makes on Python
    # floats (silently); ordered_sums makes them on arrays and must be as quiet, with the same nan
    row = np.array([np.inf, -np.inf, 1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(ordered_sums(row[None, :])[0]) and math.isnan(ordered_sum(row))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=40), n_modes=st.integers(1, 6), seed=st.integers(0, 1000))
def test_summarize_modes_equals_each_mode_on_its_own(lengths: list[int], n_modes: int, seed: int) -> None:
    # Several modes summarised at once give every mode's numbers as an independent computation of
    # that mode alone does them: torch.sum (one thread) for float sums, numpy for counts and extremes.
    rng = np.random.default_rng(seed)
    n_tokens = sum(lengths)
    advantages = rng.normal(size=n_tokens) * (rng.random(n_tokens) < 0.8)  # some exact zeros
    advantages[rng.random(n_tokens) < 0.05] = np.nan
    mask = rng.random(n_tokens) < 0.85
    batch = StepBatch.from_flat(advantages, mask, np.concatenate([[0], np.cumsum(lengths)]))
    batch = batch.with_token_factor(rng.uniform(0.5, 2.0, n_tokens)) if seed % 2 else batch
    stats = batch.stats
    weights = [rng.random(len(lengths)) * (rng.random(len(lengths)) < 0.8) for _ in range(n_modes)]
    if n_modes > 1:
        weights[1][0] = np.inf  # a non-finite row weight in one mode only
    summaries = summarize_modes(stats, weights)
    for w, summary in zip(weights, summaries, strict=True):
        with np.errstate(invalid="ignore"):  # inf weights times zero sums: nan, as in the summary
            _check_mode_alone(stats, w, summary)


def test_a_row_padded_with_zeros_keeps_its_ordered_sum() -> None:
    # Every length up to the longest a padded row holds, in every width from its own up: the values at
    # padded_positions, +0.0 elsewhere, sum to the row's own ordered_sum bit for bit, also with -0.0,
    # infinities, nan and magnitudes far apart.
    rng = np.random.default_rng(7)
    fits = [n for n in range(400) if padded_width([n]) is not None]
    assert fits[:200] == list(range(200)) and 400 not in fits
    for n in fits:
        own = padded_width([n])
        assert own is not None
        for width in sorted({own, padded_width([n, fits[-1]]) or own}):
            values = rng.normal(size=(6, n)) * 10.0 ** rng.integers(-12, 13, size=(6, n))
            values[1] = -0.0
            values[2, rng.random(n) < 0.2] = -0.0
            values[3, rng.random(n) < 0.1] = np.inf
            values[4, rng.random(n) < 0.1] = -np.inf
            values[5, rng.random(n) < 0.05] = np.nan
            padded = np.zeros((6, width))
            padded[:, padded_positions(n, width)] = values
            with np.errstate(invalid="ignore"):
                expected = ordered_sums(values) if n else np.zeros(6)
                got = ordered_sums(padded)
            assert got.tobytes() == expected.tobytes() or np.array_equal(got, expected, equal_nan=True), (n, width)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 2, 5, 8, 30, 37, 57, 250]), min_size=1, max_size=8),
    n_modes=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_summarize_steps_gives_every_step_its_own_summaries(sizes: list[int], n_modes: int, seed: int) -> None:
    # Steps summarised together (those of one size stacked) give each step what an independent
    # computation of that step alone gives, mode by mode, as summarize_modes does for one step.
    rng = np.random.default_rng(seed)
    steps, weights = [], []
    for n_seqs in sizes:
        lengths = rng.integers(0, 9, n_seqs)
        n_tokens = int(lengths.sum())
        advantages = rng.normal(size=n_tokens) * (rng.random(n_tokens) < 0.8)
        advantages[rng.random(n_tokens) < 0.05] = np.nan
        batch = StepBatch.from_flat(advantages, rng.random(n_tokens) < 0.85, np.concatenate([[0], np.cumsum(lengths)]))
        steps.append(batch.with_token_factor(rng.uniform(0.5, 2.0, n_tokens)) if rng.random() < 0.5 else batch)
        weights.append([rng.random(n_seqs) * (rng.random(n_seqs) < 0.8) for _ in range(n_modes)])
        if rng.random() < 0.3:
            weights[-1][-1][0] = np.inf
    summaries = summarize_steps([batch.stats for batch in steps], weights)
    assert len(summaries) == len(steps)
    for batch, step_weights, step_summaries in zip(steps, weights, summaries, strict=True):
        alone = summarize_modes(batch.stats, step_weights)
        assert all(
            _same(getattr(got, f.name), getattr(one, f.name))
            for got, one in zip(step_summaries, alone, strict=True)
            for f in fields(ModeSummary)
        )
        for w, summary in zip(step_weights, step_summaries, strict=True):
            with np.errstate(invalid="ignore"):
                _check_mode_alone(batch.stats, w, summary)


def test_zero_extremes_keep_their_sign_and_empty_steps_have_none() -> None:
    # Zero weights times per-token factors of both signs make +0.0 and -0.0 both extreme: the sign is
    # the one a reduction over the step's rows with tokens gives, alone or stacked with other steps.
    has = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1, 0])
    factor = np.where(np.array([1, 0, 1, 1, 1, 0, 0, 1, 0, 1]) == 1, -1.0, 1.0)
    n = has.size
    stats = SequenceStats(
        lengths=has,
        loss_tokens=has,
        adv_abs_sum=np.zeros(n),
        adv_sum=np.zeros(n),
        zero_adv_tokens=has,
        nonfinite_adv_tokens=np.zeros(n, np.int64),
        masked_nonzero_adv_tokens=np.zeros(n, np.int64),
        factor_sum=factor * has,
        factor_sq_sum=has * 1.0,
        factor_min=factor,
        factor_max=factor,
    )
    w = np.zeros(n)
    rows = has > 0
    expected_low = float(np.minimum(w * factor, w * factor)[rows].min())
    expected_high = float(np.maximum(w * factor, w * factor)[rows].max())
    other = StepBatch.from_flat(np.ones(7), np.ones(7, dtype=bool), np.array([0, 3, 7])).stats
    for summary in (summarize(stats, w), summarize_steps([other, stats], [[np.ones(2)], [w]])[1][0]):
        assert _same(summary.min_token_weight, expected_low) and _same(summary.max_token_weight, expected_high)
    empty = StepBatch.from_flat(np.zeros(0), np.zeros(0, dtype=bool), np.array([0])).stats
    for summary in (summarize(empty, np.zeros(0)), *summarize_steps([empty, empty], [[np.zeros(0)], [np.zeros(0)]])[0]):
        assert summary.loss_tokens == 0 and summary.min_token_weight is None and summary.max_token_weight is None
    # the modes' weights as one [n_modes, n_seqs] array, as before
    assert summarize_modes(other, np.ones((2, 2))) == summarize_modes(other, [np.ones(2), np.ones(2)])


def _check_mode_alone(stats: SequenceStats, w: np.ndarray, summary: ModeSummary) -> None:
    """One mode's summary against torch sums and numpy counts of that mode alone."""
    finite = np.where(np.isfinite(w), w, 0.0)
    assert _same(summary.weight_sum, _torch_sum(w * stats.factor_sum))
    sq_sum = _torch_sum(w * w * stats.factor_sq_sum)
    # x * x, the correctly rounded square: libm's pow(x, 2), which ``x**2`` calls, can be an ulp off it
    assert _same(summary.ess_tokens, (summary.weight_sum * summary.weight_sum / sq_sum if sq_sum > 0 else None))
    assert _same(summary.grad_abs_sum, _torch_sum(finite * stats.adv_abs_sum))
    assert _same(summary.grad_pos_sum, _torch_sum(finite * stats.adv_pos_sum))
    assert _same(summary.grad_neg_sum, _torch_sum(finite * stats.adv_neg_sum))
    zero = np.where(w == 0, stats.loss_tokens - stats.nonfinite_adv_tokens, stats.zero_adv_tokens)
    assert summary.zero_grad_tokens == int(np.where(np.isfinite(w), zero, 0).sum())
    assert summary.nonfinite_grad_tokens == int(np.where(np.isfinite(w), stats.nonfinite_adv_tokens, stats.loss_tokens).sum())
    rows = stats.loss_tokens > 0
    extremes = np.concatenate([(w * stats.factor_min)[rows], (w * stats.factor_max)[rows]])
    assert _same(summary.min_token_weight, (float(extremes.min()) if rows.any() else None))
    assert _same(summary.max_token_weight, (float(extremes.max()) if rows.any() else None))
    assert _same(summary.long_short_ratio, _long_short_by_torch(stats.loss_tokens, w, stats.factor_sum))
    assert _same(summary.long_short_ratio, long_short_ratio(stats.loss_tokens, w, stats.factor_sum))


def _same(got: float | None, expected: float | None) -> bool:
    """The same number bit for bit (nan equals nan; 0.0 is not -0.0), or both None."""
    if got is None or expected is None:
        return got is None and expected is None
    return np.float64(got).tobytes() == np.float64(expected).tobytes()


def _long_short_by_torch(loss_tokens: np.ndarray, w: np.ndarray, factor_sum: np.ndarray) -> float | None:
    """The long/short ratio of ``ModeSummary``, spelt out: quarters by stable rank, torch sums."""
    if loss_tokens.size < 2:
        return None
    quarter = max(1, loss_tokens.size // 4)
    ranked = np.argsort(loss_tokens, kind="stable")
    means = []
    for rows in (ranked[:quarter], ranked[-quarter:]):
        tokens = _torch_sum(loss_tokens[rows].astype(np.float64))
        means.append(_torch_sum(w[rows] * factor_sum[rows]) / tokens if tokens else np.nan)
    short, long = means
    return long / short if np.isfinite(short) and np.isfinite(long) and short != 0 else None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_results_stay_on_the_gpu() -> None:
    advantages = torch.randn(4, 8, device="cuda")
    batch = StepBatch.from_padded(advantages, torch.ones(4, 8, device="cuda"), uids=torch.tensor([0, 0, 1, 1], device="cuda"))
    weights = aggscope.compute_weights(batch, "prompt_mean", aggscope.Layout(micro_batch_size=1))
    assert batch.input_device.type == "cuda" and weights.token_weights().is_cuda and weights.grad_weights().is_cuda


def test_mode_summary_to_dict_is_every_field_with_nonfinite_as_none() -> None:
    summary = ModeSummary(10, 1.5, math.inf, 0.5, -0.25, None, math.nan, 2, 0, 0.1, 0.2)
    expected = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in asdict(summary).items()}
    assert summary.to_dict() == expected
    assert list(summary.to_dict()) == [f.name for f in fields(ModeSummary)]
