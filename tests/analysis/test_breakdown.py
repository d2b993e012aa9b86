"""The breakdown behind figures and reports: engine numbers as they are, and groupings checked by hand
and against plain loops written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

import aggscope.analysis.breakdown.step as breakdown_step_module
from aggscope.analysis.breakdown import HISTOGRAM_LOG10_EDGES, run_breakdown
from aggscope.analysis.breakdown.model import MIN_ROWS_PER_BUCKET
from aggscope.analysis.specs import Spec, parse_spec
from aggscope.analysis.weights import run_weights
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.weights import compute_weights
from aggscope.errors import AggscopeError
from aggscope.io.open import load_steps


def worked_example() -> StepBatch:
    """The reference sheet's worked example: g0 rows of 10 and 30 loss tokens, g1 rows of 5 and 15.

    Advantages +1, -1, +2, -2 (one per row); rewards 1, 0, 1, 1 (g0 mean 0.5, g1 mean 1).
    """
    lengths = [10, 30, 5, 15]
    advantages = np.repeat([1.0, -1.0, 2.0, -2.0], lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return StepBatch.from_flat(
        advantages, np.ones(advantages.size, dtype=bool), offsets, uids=["g0", "g0", "g1", "g1"], rewards=[1.0, 0.0, 1.0, 1.0]
    )


def specs(*names: str, layout: Layout | None = None) -> list[Spec]:
    return [parse_spec(name, layout or Layout()) for name in names]


def test_worked_example_by_hand() -> None:
    breakdown = run_breakdown([worked_example()], specs("token_mean", "sequence_mean", "prompt_mean"))
    # Four rows fill one bucket by default (at least MIN_ROWS_PER_BUCKET = 5 a bucket) ...
    assert breakdown.length_buckets(4).rows.tolist() == [4, 0, 0, 0]
    # ... and one each at one row a bucket: row 2 (5), row 0 (10), row 3 (15), row 1 (30).
    quartiles = breakdown.length_buckets(4, min_rows=1)
    assert quartiles.rows.tolist() == [1, 1, 1, 1]
    assert quartiles.min_tokens.tolist() == [5, 10, 15, 30]
    # token_mean, w = 1/60: row gradient mass L|A|/60 = 10/60, 30/60, 10/60, 30/60 (total 80/60);
    # by quartile (rows 2, 0, 3, 1): 10/80, 10/80, 30/80, 30/80.
    assert quartiles.grad_share("token_mean").tolist() == pytest.approx([0.125, 0.125, 0.375, 0.375], rel=1e-12)
    # sequence_mean, w = 1/(4 L): row mass |A|/4 = .25, .25, .5, .5 (total 1.5): quartiles 1/3, 1/6, 1/3, 1/6.
    assert quartiles.grad_share("sequence_mean").tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 3, 1 / 6], rel=1e-12)
    # Rewards: min 0, max 1; g0 mean 0.5 -> medium, g1 mean 1 -> easy.
    difficulty = breakdown.difficulty_buckets()
    assert difficulty is not None
    assert difficulty.rows.tolist() == [0, 2, 2, 0]
    assert difficulty.grad_share("token_mean").tolist()[1:3] == pytest.approx([0.5, 0.5], rel=1e-12)
    assert difficulty.grad_share("sequence_mean").tolist()[1:3] == pytest.approx([1 / 3, 2 / 3], rel=1e-12)
    # Share of the step's weight per prompt: token_mean 40/60 and 20/60; sequence_mean and prompt_mean 1/2 each.
    assert breakdown.prompt_weight_share("token_mean").tolist() == pytest.approx([2 / 3, 1 / 3], rel=1e-12)
    assert breakdown.prompt_weight_share("sequence_mean").tolist() == pytest.approx([0.5, 0.5], rel=1e-12)
    assert breakdown.prompt_weight_share("prompt_mean").tolist() == pytest.approx([0.5, 0.5], rel=1e-12)
    # Gradient mass per prompt under token_mean: g0 (10 + 30)/60, g1 (10 + 30)/60.
    assert breakdown.prompt_grad_mass("token_mean").tolist() == pytest.approx([40 / 60, 40 / 60], rel=1e-12)


def test_weight_ratio_quantiles_by_hand() -> None:
    breakdown = run_breakdown([worked_example()], specs("token_mean", "sequence_mean"))
    # Ratio (1/(4L)) / (1/60) = 15/L: rows 1.5, 0.5, 3, 1 with 10, 30, 5, 15 tokens.
    # Sorted: 0.5 (30 tokens), 1 (15), 1.5 (10), 3 (5); cumulative 30, 45, 55, 60.
    ratio = breakdown.ratio_quantiles("token_mean", "sequence_mean", (0.1, 0.5, 0.75, 0.9, 0.99))
    assert ratio["p10"] == 0.5 and ratio["p50"] == 0.5  # 6 and 30 tokens: reached by the first row
    assert ratio["p75"] == 1.0  # 45 tokens
    assert ratio["p90"] == 1.5  # 54 tokens
    assert ratio["p99"] == 3.0  # 59.4 tokens
    # Token-weighted mean (0.5*30 + 1*15 + 1.5*10 + 3*5) / 60 = 1; above it 15 of 60 tokens, below it 30.
    assert ratio["mean"] == pytest.approx(1.0, rel=1e-12)
    assert ratio["share_above_mean"] == pytest.approx(0.25, rel=1e-12)
    assert ratio["share_below_mean"] == pytest.approx(0.5, rel=1e-12)
    assert ratio["excluded_tokens"] == 0


def test_token_histogram_by_hand() -> None:
    breakdown = run_breakdown([worked_example()], specs("token_mean"))
    histogram = breakdown.results["token_mean"].histogram
    # Mean |g| = (80/60) / 60 loss tokens; relative |g| = |A| * (1/60) / (80/3600) = 0.75 |A|.
    # Positive: 10 tokens at 0.75, 5 at 1.5; negative: 30 at 0.75, 15 at 1.5.
    at = np.searchsorted(HISTOGRAM_LOG10_EDGES, [math.log10(0.75), math.log10(1.5)], side="right") - 1
    expected_positive = np.zeros(histogram.positive.size, dtype=np.int64)
    expected_positive[at] = [10, 5]
    expected_negative = np.zeros(histogram.negative.size, dtype=np.int64)
    expected_negative[at] = [30, 15]
    assert histogram.positive.tolist() == expected_positive.tolist()
    assert histogram.negative.tolist() == expected_negative.tolist()


def test_summaries_are_the_engines_own() -> None:
    """Every SPEC's per-step and total summary equals what ``aggscope weights`` computes at its layout."""
    steps = load_steps()
    base = Layout(max_seq_len=1024)
    chosen = [
        parse_spec("token_mean", base),
        parse_spec("token_mean_legacy,mini-batch-size=100,micro-batch-size=8,dp-size=2", base),
        parse_spec("prompt_mean,mini-batch-prompts=5", base),
        parse_spec("dr_grpo,mini-batch-size=100,micro-batch-size=8,dp-size=2", base),
    ]
    breakdown = run_breakdown(steps, chosen)
    for spec in chosen:
        engine = run_weights(steps, [spec.mode], spec.layout)
        result = breakdown.results[spec.label]
        assert result.total == engine.total.modes[spec.mode.name]
        assert result.steps == [step.modes[spec.mode.name] for step in engine.steps]
        expected_weights = np.concatenate([compute_weights(batch, spec.mode, spec.layout).row_weight for batch in steps])
        assert np.array_equal(result.row_weight, expected_weights)
        # Bucket sums add up to the engine's totals.
        quartiles = breakdown.length_buckets(4)
        assert quartiles.grad_mass[spec.label].sum() == pytest.approx(result.total.grad_abs_sum, rel=1e-12)
        assert quartiles.weight_mass[spec.label].sum() == pytest.approx(result.total.weight_sum, rel=1e-12)
    assert breakdown.steps == [0, 1, 2, 3]
    assert breakdown.n_prompts == 128 and breakdown.n_rows == 1024


def plain_loop_buckets(batches: list[StepBatch], layout: Layout, mode: str, k: int, per_step: bool) -> list[float]:
    """Gradient mass per length bucket, token by token: the straightforward way."""
    rows = []  # (step index, loss tokens, gradient mass)
    for index, batch in enumerate(batches):
        weight = compute_weights(batch, mode, layout).row_weight.tolist()
        offsets = batch.offsets.tolist()
        advantages = batch.advantages.tolist()
        mask = batch.loss_mask.tolist()
        for i in range(batch.n_sequences):
            loss_tokens, mass = 0, 0.0
            for t in range(offsets[i], offsets[i + 1]):
                if mask[t]:
                    loss_tokens += 1
                    if math.isfinite(advantages[t]):
                        mass += abs(weight[i] * advantages[t])
            rows.append((index, loss_tokens, mass))
    n_buckets = k * len(batches) if per_step else k
    masses = [0.0] * n_buckets
    groups = [[r for r in rows if r[0] == s] for s in range(len(batches))] if per_step else [rows]
    for group_index, group in enumerate(groups):
        n = len(group)
        used = max(1, min(k, n // MIN_ROWS_PER_BUCKET))
        for row in group:
            # Ties never split: a row's rank is the middle rank of the rows of its length.
            first = sum(1 for other in group if other[1] < row[1])
            last = first + sum(1 for other in group if other[1] == row[1]) - 1
            part = (first + last) // 2 * used // n
            bucket = part if used == k else part * (k - 1) // max(used - 1, 1)
            masses[(group_index * k if per_step else 0) + bucket] += row[2]
    return masses


@st.composite
def random_steps(draw: st.DrawFn) -> list[StepBatch]:
    n_steps = draw(st.integers(1, 3))
    steps = []
    for step in range(n_steps):
        n_rows = draw(st.integers(1, 12))
        lengths = draw(st.lists(st.integers(0, 7), min_size=n_rows, max_size=n_rows))
        n_tokens = sum(lengths)
        values = st.sampled_from([0.0, 1.0, -1.0, 0.5, -2.5, 3.0, math.nan])
        advantages = draw(st.lists(values, min_size=n_tokens, max_size=n_tokens))
        mask = draw(st.lists(st.booleans(), min_size=n_tokens, max_size=n_tokens))
        uids = draw(st.lists(st.sampled_from("abcd"), min_size=n_rows, max_size=n_rows))
        rewards = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, math.nan]), min_size=n_rows, max_size=n_rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        steps.append(
            StepBatch.from_flat(
                np.array(advantages, dtype=np.float64), np.array(mask, dtype=bool), offsets, uids=uids, rewards=rewards, step=step
            )
        )
    return steps


layouts = st.builds(
    Layout,
    mini_batch_size=st.one_of(st.none(), st.integers(1, 6)),
    micro_batch_size=st.one_of(st.none(), st.integers(1, 4)),
    dp_size=st.integers(1, 3),
    order=st.sampled_from(["logged", "grouped", "shuffle"]),
)


@settings(max_examples=40, deadline=None)
@given(random_steps(), layouts, st.sampled_from(["token_mean", "sequence_mean", "prompt_mean", "token_mean_legacy"]))
def test_length_buckets_match_a_plain_loop(steps: list[StepBatch], layout: Layout, mode: str) -> None:
    spec = Spec(parse_spec(mode, layout).mode, layout)
    breakdown = run_breakdown(steps, [spec])
    for k in (4, 10):
        expected = plain_loop_buckets(steps, layout, mode, k, per_step=False)
        assert breakdown.length_buckets(k).grad_mass[spec.label].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    per_step = breakdown.buckets(breakdown.length_bucket_of_row(4, per_step=True), [str(i) for i in range(4 * len(steps))])
    expected = plain_loop_buckets(steps, layout, mode, 4, per_step=True)
    assert per_step.grad_mass[spec.label].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    # Prompt weight shares add up to 1 in every step that has weight.
    shares = breakdown.prompt_weight_share(spec.label)
    for index in range(len(steps)):
        in_step = shares[breakdown.prompt_step == index]
        if not np.isnan(in_step).any():
            assert float(in_step.sum()) == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(random_steps())
def test_difficulty_and_prompt_rewards_match_a_plain_loop(steps: list[StepBatch]) -> None:
    breakdown = run_breakdown(steps, specs("token_mean"))
    prompt_rewards: list[list[float]] = []
    for batch in steps:
        rewards = batch.rewards.tolist() if batch.rewards is not None else []
        uids = batch.row_uids()
        for uid in batch.uid_labels or ():
            prompt_rewards.append([r for r, u in zip(rewards, uids, strict=True) if u == uid and math.isfinite(r)])
    means = [sum(r) / len(r) if r else math.nan for r in prompt_rewards]
    assert breakdown.prompt_reward is not None
    assert breakdown.prompt_reward.tolist() == pytest.approx(means, rel=1e-12, nan_ok=True)
    finite = [r for rewards in prompt_rewards for r in rewards]
    level = breakdown.difficulty_of_prompt()
    if not finite or min(finite) == max(finite):
        assert level is None
        return
    low, high = min(finite), max(finite)
    expected = []
    for mean in means:
        if math.isnan(mean):
            expected.append(3)
        else:
            position = (mean - low) / (high - low)
            expected.append(0 if position < 1 / 3 else 1 if position < 2 / 3 else 2)
    assert level is not None and level.tolist() == expected


def test_histogram_counts_every_token_with_a_nonzero_finite_gradient() -> None:
    steps = load_steps()
    breakdown = run_breakdown(steps, specs("token_mean", "sequence_mean", layout=Layout(mini_batch_size=100)))
    for label in ("token_mean", "sequence_mean"):
        histogram = breakdown.results[label].histogram
        expected_positive = sum(int((b.loss_mask & (b.advantages > 0)).sum()) for b in steps)
        expected_negative = sum(int((b.loss_mask & (b.advantages < 0)).sum()) for b in steps)
        assert int(histogram.positive.sum()) == expected_positive
        assert int(histogram.negative.sum()) == expected_negative


def test_no_steps_and_mixed_uids_are_errors() -> None:
    with pytest.raises(AggscopeError, match="no steps"):
        run_breakdown([], specs("token_mean"))
    with pytest.raises(AggscopeError, match="at least one mode"):
        run_breakdown([worked_example()], [])
    plain = StepBatch.from_flat([1.0, 1.0], [1, 1], [0, 1, 2], step=1)
    with pytest.raises(AggscopeError, match="step 1 has no uid column unlike earlier steps"):
        run_breakdown([worked_example(), plain], specs("token_mean"))


def test_without_uids() -> None:
    plain = StepBatch.from_flat([1.0, -1.0, 2.0], [1, 1, 1], [0, 1, 3], step=0)
    breakdown = run_breakdown([plain], specs("token_mean"))
    assert not breakdown.has_groups
    assert breakdown.difficulty_buckets() is None
    # Without uids, the units of concentration are the rows: 1/3 and (1 + 2)/3.
    assert breakdown.prompt_grad_mass("token_mean").tolist() == pytest.approx([1 / 3, 3 / 3], rel=1e-12)
    with pytest.raises(AggscopeError, match="prompt_mean"):
        run_breakdown([plain], specs("prompt_mean"))


# ---- what the reports state (moved here from the report renderer) ------------------------------
def test_concentration_by_hand() -> None:
    breakdown = run_breakdown([worked_example()], specs("token_mean", "sequence_mean"))
    # token_mean: g0 and g1 get 40/60 each: equal, so Gini 0 and the top half (1 of 2 prompts) has 1/2.
    even = breakdown.concentration("token_mean")
    assert (even.unit, even.units, even.zero_mass_units) == ("prompts", 2, 0)
    assert even.gini == pytest.approx(0.0, abs=1e-12)
    assert even.top_10pct_share == even.top_half_share == pytest.approx(0.5, rel=1e-12)
    # sequence_mean: g0 gets .25 + .25 = 0.5, g1 .5 + .5 = 1 (total 1.5); the top prompt (10% of 2
    # rounds up to 1) has 1 / 1.5. Gini = sum_ij |x_i - x_j| / (2 n^2 mean) = 2 * 0.5 / (2 * 4 * 0.75) = 1/6.
    uneven = breakdown.concentration("sequence_mean")
    assert uneven.top_10pct_share == uneven.top_half_share == pytest.approx(2 / 3, rel=1e-12)
    assert uneven.gini == pytest.approx(1 / 6, rel=1e-12)
    assert breakdown.ranked_prompt_mass("sequence_mean").tolist() == pytest.approx([1.0, 0.5], rel=1e-12)


def test_concentration_without_mass_or_uids() -> None:
    flat = StepBatch.from_flat([0.0, 0.0, 0.0], [1, 1, 1], [0, 1, 3], uids=["a", "b"], step=0)
    nothing = run_breakdown([flat], specs("token_mean")).concentration("token_mean")
    assert (nothing.units, nothing.gini, nothing.top_half_share, nothing.zero_mass_units) == (2, None, None, None)
    plain = StepBatch.from_flat([1.0, -1.0, 2.0], [1, 1, 1], [0, 1, 3], step=0)
    rows = run_breakdown([plain], specs("token_mean")).concentration("token_mean")
    # Without uids the units are the rows: masses 1/3 and 3/3, so the top row has 3/4.
    assert (rows.unit, rows.units) == ("sequences", 2)
    assert rows.top_half_share == pytest.approx(0.75, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(random_steps())
def test_gini_matches_the_mean_absolute_difference(steps: list[StepBatch]) -> None:
    breakdown = run_breakdown(steps, specs("sequence_mean"))
    mass = breakdown.prompt_grad_mass("sequence_mean").tolist()
    gini = breakdown.concentration("sequence_mean").gini
    if not sum(mass) > 0:
        assert gini is None
        return
    mean = sum(mass) / len(mass)
    expected = sum(abs(a - b) for a in mass for b in mass) / (2 * len(mass) ** 2 * mean)
    assert gini == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_prompt_moves_by_hand() -> None:
    breakdown = run_breakdown([worked_example()], specs("token_mean", "sequence_mean"))
    # Shares of the step's gradient mass: token_mean rows L|A|/60 = 10, 30, 10, 30 (/60): g0 and g1 1/2 each;
    # sequence_mean rows |A|/4 = .25, .25, .5, .5: g0 1/3, g1 2/3.
    moves = breakdown.prompt_moves("token_mean", "sequence_mean", top=5)
    assert moves is not None
    (gaining,), (losing,) = moves
    assert (gaining.uid, gaining.step, gaining.sequences, gaining.loss_tokens, gaining.mean_reward) == ("g1", 0, 2, 20, 1.0)
    assert (gaining.base_share, gaining.candidate_share) == pytest.approx((1 / 2, 2 / 3), rel=1e-12)
    # Its share of the weight: token_mean 20/60, sequence_mean 1/2.
    assert (gaining.base_weight_share, gaining.candidate_weight_share) == pytest.approx((1 / 3, 1 / 2), rel=1e-12)
    assert gaining.change_points == pytest.approx(100 / 6, rel=1e-12)
    assert (losing.uid, losing.loss_tokens, losing.mean_reward) == ("g0", 40, 0.5)
    assert losing.change_points == pytest.approx(-100 / 6, rel=1e-12)
    # No change, no move; no uids, no prompts.
    assert breakdown.prompt_moves("token_mean", "token_mean", top=5) == ([], [])
    plain = StepBatch.from_flat([1.0, -1.0], [1, 1], [0, 1, 2], step=0)
    assert run_breakdown([plain], specs("token_mean", "sequence_mean")).prompt_moves("token_mean", "sequence_mean", 5) is None


def test_sign_shares_and_changes_by_hand() -> None:
    from aggscope.analysis.breakdown import compare_specs

    comparison = compare_specs(run_breakdown([worked_example()], specs("token_mean", "sequence_mean")), min_rows_per_bucket=1)
    # token_mean, w = 1/60: positive mass (10 * 1 + 5 * 2) / 60, negative (30 * 1 + 15 * 2) / 60: 1/4 and 3/4.
    sign = comparison.outcomes["token_mean"].advantage_sign
    assert (sign.positive_share, sign.negative_share) == pytest.approx((0.25, 0.75), rel=1e-12)
    # sequence_mean, w = 1/(4L): positive .25 + .5, negative .25 + .5: half each.
    assert comparison.outcomes["sequence_mean"].advantage_sign.positive_share == pytest.approx(0.5, rel=1e-12)
    (change,) = comparison.changes
    assert (change.base, change.candidate) == ("token_mean", "sequence_mean")
    # Quartiles (rows 2, 0, 3, 1): token_mean 1/8, 1/8, 3/8, 3/8; sequence_mean 1/3, 1/6, 1/3, 1/6.
    assert change.length_quartiles is not None
    expected = [100 * (1 / 3 - 1 / 8), 100 * (1 / 6 - 1 / 8), 100 * (1 / 3 - 3 / 8), 100 * (1 / 6 - 3 / 8)]
    assert change.length_quartiles.change_points.tolist() == pytest.approx(expected, rel=1e-12)
    assert change.zero_grad_tokens == (0, 0)
    assert change.to_dict()["advantage_sign"]["candidate"]["positive_share"] == pytest.approx(0.5, rel=1e-12)


def test_worst_step_is_checks_worst_step() -> None:
    """The step a report pictures is the one ``check`` reports as its worst step, under the worst layout."""
    from aggscope.analysis.checks import run_checks

    steps = load_steps(str(SAMPLE_DATA / "faulty.parquet"))[::-1]  # the worst step (0) last
    chosen = specs("token_mean", "token_mean,mini-batch-size=10")
    breakdown = run_breakdown(steps, chosen)
    worst = {}
    for spec in chosen:
        report = run_checks(steps, [spec.mode], spec.layout).to_dict()["worst_step"]
        worst[tuple(report["counts"].values())] = report["step"]
    assert breakdown.steps[breakdown.worst_step_index()] == worst[max(worst)] == 0
    assert breakdown.worst_step_index() == len(steps) - 1
    plain = StepBatch.from_flat([1.0, -1.0], [1, 1], [0, 1, 2], step=7)
    assert run_breakdown([plain], specs("token_mean")).worst_step_index() == 0  # no uids: no picture


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=200), st.integers(0, 60))
def test_bin_index_counts_as_numpy_histogram(values: list[float], on_edge: int) -> None:
    """The histogram's integer bins are np.histogram's, values exactly on an edge included."""
    from aggscope.analysis.breakdown.step import uniform_bin_index

    array = np.array([*values, float(HISTOGRAM_LOG10_EDGES[on_edge]), -3.0, 3.0])
    bins = HISTOGRAM_LOG10_EDGES.size - 1
    ours = np.bincount(uniform_bin_index(array, HISTOGRAM_LOG10_EDGES), minlength=bins)
    theirs = np.histogram(array, bins=bins, range=(-3.0, 3.0))[0]
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("runs_chunk", [1 << 17, 50], ids=["one_chunk", "chunks_of_50_tokens"])
@pytest.mark.parametrize("per_row", [False, True])
def test_histogram_matches_a_plain_per_token_count(monkeypatch: pytest.MonkeyPatch, per_row: bool, runs_chunk: int) -> None:
    """Per-token (or per-row, as GRPO's: runs of equal advantages) advantages, rows without weight and
    masked tokens: the counts of a loop over tokens, whether the runs are found in one chunk or many."""
    monkeypatch.setattr(breakdown_step_module, "_RUNS_CHUNK", runs_chunk)
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 40, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    advantages = rng.normal(0, 1, size=int(offsets[-1])) * (rng.random(int(offsets[-1])) < 0.9)
    if per_row:  # one value per row, and equal values in neighbouring rows (runs must stop at rows)
        advantages = np.repeat(np.round(rng.normal(0, 1, size=lengths.size), 1), lengths)
    mask = rng.random(advantages.size) < 0.8
    mask[offsets[3] : offsets[4]] = False  # a row without loss tokens: no weight under sequence_mean
    uids = [f"g{i // 4}" for i in range(lengths.size)]
    batch = StepBatch.from_flat(advantages, mask, offsets, uids=uids)
    breakdown = run_breakdown([batch], specs("token_mean", "sequence_mean", "prompt_mean"))
    edges = HISTOGRAM_LOG10_EDGES
    for label, result in breakdown.results.items():
        weights = compute_weights(batch, label)
        token_weight = np.repeat(weights.row_weight, lengths).astype(np.float64)
        grad = np.abs(token_weight * advantages)
        mean_abs = grad[mask].sum() / mask.sum()
        positive, negative = np.zeros(edges.size - 1, dtype=int), np.zeros(edges.size - 1, dtype=int)
        for token in np.flatnonzero(mask & (advantages != 0) & (token_weight != 0)):
            value = min(max(math.log10(abs(advantages[token])) + math.log10(token_weight[token] / mean_abs), -3.0), 3.0)
            index = min(int(np.searchsorted(edges, value, side="right")) - 1, edges.size - 2)
            (positive if advantages[token] > 0 else negative)[index] += 1
        assert result.histogram.positive.tolist() == positive.tolist(), label
        assert result.histogram.negative.tolist() == negative.tolist(), label
