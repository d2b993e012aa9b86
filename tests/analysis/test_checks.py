"""Tests of ``aggscope.analysis.checks``: hand-worked cases, the faulty sample, and a plain-loop reference."""

import math
from collections import Counter
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from check_reference import (
    canonical_prompt_mean,
    cut_prompts,
    expected_findings,
    rebased_prompt_mean,
    rows_of,
    units_of,
    zero_grad_causes_by_token,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggscope.analysis.checks import (
    CODES,
    CUT_LEVELS,
    ZERO_GRAD_CAUSES,
    CheckAccumulator,
    Finding,
    boundary_prompt_mean,
    check_step,
    layout_flags,
    parse_fail_on,
    run_checks,
    safe_chunk_sizes,
    zero_grad_causes,
)
from aggscope.analysis.runner import Engine
from aggscope.analysis.weights import run_weights
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import default_modes, resolve_modes
from aggscope.core.split import split_step
from aggscope.core.weights import analyse_step, split_batch
from aggscope.errors import AggscopeError
from aggscope.fmt import row_ranges
from aggscope.io.open import open_rollouts
from aggscope.present.lanes import split_picture
from aggscope.samples.faulty import FAULTY_CONFIG, MASKED_SPAN, faulty_layout, generate_faulty, write_faulty_sample
from aggscope.samples.generate import SampleConfig, write_sample

REPO = Path(__file__).resolve().parents[2]
FAULTY = REPO / "sample_data" / "faulty.parquet"
ALL_MODES = ["token_mean", "token_mean_legacy", "token_sum", "sequence_mean", "seq_mean_token_sum", "prompt_mean"]


def batch_of(
    uids: list[str] | None,
    lengths: list[int],
    advantages: list[float] | None = None,
    *,
    rewards: list[float] | None = None,
    mask: list[bool] | None = None,
    step: int = 0,
) -> StepBatch:
    """A batch whose row ``i`` has ``lengths[i]`` tokens, all carrying ``advantages[i]`` (default 1)."""
    per_row = advantages if advantages is not None else [1.0] * len(lengths)
    flat = [a for a, n in zip(per_row, lengths, strict=True) for _ in range(n)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return StepBatch.from_flat(
        torch.tensor(flat, dtype=torch.float32),
        mask if mask is not None else [True] * len(flat),
        offsets,
        uids=uids,
        rewards=rewards,
        step=step,
    )


def as_tuples(findings) -> set:
    return {(f.code, f.severity, f.step, f.uid, f.rows, f.tokens) for f in findings}


# ---- hand-worked ---------------------------------------------------------------------------------
def test_boundary_prompt_mean_hand_worked():
    # Prompts A (rows 0-3, L 1,2,3,4), B (rows 4-7, L 2 each), C (rows 8-11, L 5 each); 6 rows per
    # mini-batch. Mini-batch 0 (rows 0-5): runs A and B start there, so len(mine) = 2.
    #   A: T = 1+2+3+4 = 10  -> 1 / (2 * 10) = 1/20;  B is sliced at row 6: T = 2+2 = 4 -> 1/(2*4) = 1/8.
    # Mini-batch 1 (rows 6-11): only C starts there (len(mine) = 1); B's rows 6-7 keep 0.
    #   C: T = 20 -> 1/(1 * 20) = 1/20.  Canonical prompt_mean counts B too: C gets 1/(2*20) = 1/40,
    #   B's rows 6-7 get 1/(2 * 4) = 1/8.
    batch = batch_of(list("AAAABBBBCCCC"), [1, 2, 3, 4, 2, 2, 2, 2, 5, 5, 5, 5])
    layout = Layout(mini_batch_size=6)
    split = split_step(batch.n_sequences, batch.group_ids, layout, 0)
    weights = boundary_prompt_mean(batch.stats.loss_tokens, batch.group_ids, split)
    expected = [1 / 20] * 4 + [1 / 8] * 2 + [0.0] * 2 + [1 / 20] * 4
    np.testing.assert_allclose(weights, np.array(expected, dtype=np.float64), rtol=1e-12, atol=0)
    assert weights.dtype == np.float64

    check = check_step(batch, ALL_MODES, layout, split)
    silent = [f for f in check.findings if f.code == "silent_zero_advantage"]
    assert [(f.uid, f.rows, f.tokens) for f in silent] == [("B", (6, 7), 4)]
    # Gradient mass lost: rows 6-7, 4 tokens of |A| = 1 at the canonical weight 1/8 -> 0.5; the
    # mini-batch's canonical mass is 0.5 + 20 * 1/40 = 1, so the share is 50%.
    assert "Gradient mass lost: 0.5 " in silent[0].message and "50.0% of that mini-batch's" in silent[0].message
    misweight = [f for f in check.findings if f.code == "rebased_prompt_mean_misweight"]
    assert [(f.uid, f.rows, f.tokens) for f in misweight] == [(None, (8, 9, 10, 11), 20)]
    assert "counts 1 prompts where 2 have rows" in misweight[0].message and "at 2x" in misweight[0].message
    # B is cut by the mini-batch boundary, so it is named once, at that level; A and C are whole.
    cuts = [(f.code, f.uid) for f in check.findings if f.code.startswith("prompt_cut")]
    assert cuts == [("prompt_cut_by_mini_batch", "B")]
    assert check.cut_prompts == {"mini_batch": ("B",), "rank": ("B",), "micro_batch": ("B",)}


def test_skyrl_numbers_prompt_mean_without_a_cut():
    # The reference sheet's SkyRL case: prompts rows 0-1 and 2-3, one mini-batch, A [[1,2],[3,4],[5,6],[7,8]],
    # mask [[1,1],[1,0],[1,1],[1,1]] -> sum of A * w = 4.25. Without a cut the boundary weights equal the canonical.
    advantages = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], dtype=torch.float32)
    batch = StepBatch.from_flat(advantages, [1, 1, 1, 0, 1, 1, 1, 1], [0, 2, 4, 6, 8], uids=["p", "p", "q", "q"])
    split = split_step(4, batch.group_ids, Layout(), 0)
    weights = boundary_prompt_mean(batch.stats.loss_tokens, batch.group_ids, split)
    per_token = (
        torch.repeat_interleave(torch.from_numpy(weights), torch.tensor([2, 2, 2, 2]))
        * torch.from_numpy(batch.loss_mask)
        * advantages
    )
    assert float(per_token.sum()) == pytest.approx(4.25, rel=1e-12)
    # The masked token of row 1 carries A = 4: the one finding (no cut, no silent zero, no misweight).
    assert as_tuples(check_step(batch, ALL_MODES).findings) == {("masked_token_advantage", "warning", 0, "p", (1,), 1)}


def test_safe_chunk_sizes_hand_worked():
    # Spans [0,3], [4,7], [8,11] of 12 rows: a size is safe when every multiple < 12 is 4 or 8.
    safe = safe_chunk_sizes(np.array([0, 4, 8]), np.array([3, 7, 11]), 12)
    assert np.flatnonzero(safe).tolist() == [4, 8, 12]
    assert np.flatnonzero(safe_chunk_sizes(np.array([0]), np.array([0]), 1)).tolist() == [1]


def test_safe_chunk_sizes_matches_a_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        first = rng.integers(0, n, size=5)
        last = np.minimum(first + rng.integers(0, 6, size=5), n - 1)
        safe = safe_chunk_sizes(first, last, n)
        for size in range(1, n + 1):
            cuts = any(lo // size != hi // size for lo, hi in zip(first.tolist(), last.tolist(), strict=True))
            assert safe[size] == (not cuts)


def test_advice_names_nearest_sizes_in_sequences_and_prompts():
    # 12 rows in three prompts of 4; 6 rows per mini-batch cuts B. Safe sizes 4, 8, 12 -> nearest 4 and 8;
    # in prompts 6 / 4 = 1.5 -> 1 or 2 (contiguous uids: every prompt count is safe).
    batch = batch_of(list("AAAABBBBCCCC"), [1] * 12)
    report = run_checks([batch], ["token_mean"], Layout(mini_batch_size=6))
    (finding,) = [f for f in report.findings if f.code == "prompt_cut_by_mini_batch"]
    assert finding.message.endswith(
        "Mini-batch sizes that cut no prompt of this data: --mini-batch-size 4 or 8; --mini-batch-prompts 1 or 2."
    )


def test_advice_over_steps_and_with_grouped_order():
    # Step 0 is contiguous (safe: 4, 8, 12); step 1 has uid A again at the end, so in logged order only a
    # whole step is safe; sorted by uid, 4 and 8 are safe again.
    step0 = batch_of(list("AAAABBBBCCCC"), [1] * 12)
    step1 = batch_of(list("AAABBBBCCCCA"), [1] * 12, step=1)
    report = run_checks([step0, step1], ["token_mean"], Layout(mini_batch_size=6))
    finding = next(f for f in report.findings if f.code == "prompt_cut_by_mini_batch")
    assert "--mini-batch-size 12 (one mini-batch per step)" in finding.message
    assert "With rows sorted by uid (--order grouped): --mini-batch-size 4 or 8, or any --mini-batch-prompts." in finding.message


def test_zero_advantage_rules():
    # Group g: rewards 0, 1, 0.5 and advantages -1, 1, 0: row 2's reward is the group mean (0.5), so its 0 is
    # legitimate. Group h: rewards 1, 0 but row 4 zeroed: an error. Group z: rewards equal, advantages 0: info.
    batch = batch_of(
        ["g", "g", "g", "h", "h", "z", "z"],
        [2, 3, 4, 5, 6, 1, 1],
        [-1.0, 1.0, 0.0, 0.7, 0.0, 0.0, 0.0],
        rewards=[0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0],
    )
    report = run_checks([batch], ["token_mean"])
    assert as_tuples(report.findings) == {
        ("zero_advantage", "error", 0, "h", (4,), 6),
        ("zero_variance_group", "info", 0, "z", (5, 6), 2),
        # 4 + 6 + 2 = 12 of 22 loss tokens without gradient: 54.5% > 50%, an error
        ("no_gradient_share", "error", 0, None, (2, 4, 5, 6), 12),
    }  # group sizes 3, 2, 2: the most common size is 2, so no group is incomplete
    # Token causes: row 2 (4 tokens) at the group mean, row 4 (6) zero advantage, rows 5-6 (2) zero variance.
    assert report.zero_grad["token_mean"] == {
        "nonfinite_advantage": 0,
        "zero_variance_group": 2,
        "reward_at_group_mean": 4,
        "zero_advantage": 6,
        "zero_weight": 0,
        "nonfinite_weight": 0,
    }


def test_reward_at_group_mean_allows_rounding():
    # Rewards 0.1, 0.2, 0.3: the computed mean is 0.20000000000000004, not 0.2, yet row 1's advantage 0 is
    # legitimate (r == mean); it must not be flagged, and its tokens are reward_at_group_mean.
    batch = batch_of(["g"] * 3, [2, 3, 2], [-1.0, 0.0, 1.0], rewards=[0.1, 0.2, 0.3])
    assert (0.1 + 0.2 + 0.3) / 3 != 0.2
    check = check_step(batch, ["token_mean"])
    # only row 1's 3 of 7 loss tokens lack a gradient: 42.9%, above 25%, a warning and no other finding
    assert as_tuples(check.findings) == {("no_gradient_share", "warning", 0, None, (1,), 3)}
    assert check.zero_grad["token_mean"]["reward_at_group_mean"] == 3


def test_zero_variance_ignores_nan_rewards_and_falls_back_on_advantages():
    # g: rewards 1, 1, NaN -> the finite rewards are equal: zero-variance. h: all NaN rewards and all
    # advantages 0 -> judged by advantages: zero-variance. k: all NaN rewards, one advantage non-zero: not.
    batch = batch_of(
        ["g", "g", "g", "h", "h", "k", "k"],
        [1, 1, 1, 2, 2, 3, 3],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        rewards=[1.0, 1.0, math.nan, math.nan, math.nan, math.nan, math.nan],
    )
    zero_variance = {f.uid for f in check_step(batch, ["token_mean"]).findings if f.code == "zero_variance_group"}
    assert zero_variance == {"g", "h"}
    # k's row 5 is all-zero in a group that is not zero-variance, and a NaN reward is never "at the mean".
    zeroed = [f.rows for f in check_step(batch, ["token_mean"]).findings if f.code == "zero_advantage"]
    assert zeroed == [(5,)]


def test_zero_variance_message_notices_advantages_that_are_not_zero():
    # Rewards equal (1, 1) but advantages 0.3 and -0.3 (a value baseline, say): still zero-variance by the
    # rewards, and the message says the advantages do not come from them; no token lacks gradient.
    batch = batch_of(["g", "g"], [2, 3], [0.3, -0.3], rewards=[1.0, 1.0])
    (finding,) = check_step(batch, ["token_mean"]).findings
    assert (finding.code, finding.rows, finding.tokens) == ("zero_variance_group", (0, 1), 5)
    assert "yet 5 loss tokens carry a non-zero advantage" in finding.message
    assert sum(check_step(batch, ["token_mean"]).zero_grad["token_mean"].values()) == 0


def test_row_level_findings_without_uid():
    mask = [True, True, False, True, False, False, True]  # rows of 4, 2 and 1 tokens
    batch = batch_of(None, [4, 2, 1], [2.0, 0.5, math.nan], mask=mask)
    check = check_step(batch)
    assert as_tuples(check.findings) == {
        ("masked_token_advantage", "warning", 0, None, (0, 1), 3),
        ("empty_sequence", "warning", 0, None, (1,), 0),
        ("nonfinite_advantage", "error", 0, None, (2,), 1),
    }
    assert any("no uid column" in note for note in check.notes)
    assert check.cut_prompts == {level: () for level in CUT_LEVELS}
    assert check.lanes is None


def test_cut_levels_are_nested_and_named_once_with_the_worst_severity():
    # 8 rows of prompts A (0-3) and B (4-7); 2 ranks of 4 rows cut nothing.
    batch = batch_of(list("AAAABBBB"), [1] * 8)
    ranks = Layout(dp_size=2, micro_batch_size=4)
    assert not [f for f in check_step(batch, ALL_MODES, ranks).findings if f.code.startswith("prompt_cut")]
    # 3 ranks (3, 3, 2 rows): A is cut by the rank boundary at 3, B by the one at 6; micro-batches of 2 too.
    layout = Layout(dp_size=3, micro_batch_size=2)
    with_legacy = check_step(batch, ALL_MODES, layout)
    cuts = {(f.code, f.uid, f.severity) for f in with_legacy.findings if f.code.startswith("prompt_cut")}
    assert cuts == {("prompt_cut_by_rank", "A", "warning"), ("prompt_cut_by_rank", "B", "warning")}
    without = check_step(batch, ["token_mean", "prompt_mean"], layout)
    assert {(f.code, f.severity) for f in without.findings if f.code.startswith("prompt_cut")} == {("prompt_cut_by_rank", "info")}
    assert with_legacy.cut_prompts == {"mini_batch": (), "rank": ("A", "B"), "micro_batch": ("A", "B")}
    # Only micro-batches cut: 1 rank, micro-batches of 3 rows.
    micro = Layout(micro_batch_size=3)
    assert {(f.code, f.severity) for f in check_step(batch, ALL_MODES, micro).findings} == {
        ("prompt_cut_by_micro_batch", "warning")
    }
    assert {(f.code, f.severity) for f in check_step(batch, ["token_mean"], micro).findings} == {
        ("prompt_cut_by_micro_batch", "info")
    }


def test_noncontiguous_step_gets_no_boundary_findings():
    # A reappears at the end: the boundary-based trainer asserts, so no silent-zero rows, even though the
    # mini-batches of 3 (AAA|BBB|BA) cut B and A.
    batch = batch_of(list("AAABBBBA"), [1] * 8, [1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0])
    layout = Layout(mini_batch_size=3)
    codes = Counter(f.code for f in check_step(batch, ALL_MODES, layout).findings)
    assert codes == {"noncontiguous_uid": 1, "prompt_cut_by_mini_batch": 2}
    (finding,) = [f for f in check_step(batch, ALL_MODES, layout).findings if f.code == "noncontiguous_uid"]
    assert (finding.uid, finding.rows) == ("A", (0, 1, 2, 7))
    assert "sort rows by uid before splitting" in finding.message.lower()
    assert "`aggscope check --mini-batch-size 3 --order grouped`" in finding.message
    # In grouped order (AAA|ABB|BB) the data is contiguous: the check runs and finds the silent-zero rows.
    grouped = check_step(batch, ALL_MODES, layout.replace(order="grouped"))
    assert "noncontiguous_uid" not in {f.code for f in grouped.findings}
    assert "silent_zero_advantage" in {f.code for f in grouped.findings}


def test_boundary_checks_need_prompt_mean():
    batch = batch_of(list("AAAABBBB"), [1] * 8, [1.0, -1.0] * 4)
    layout = Layout(mini_batch_size=6)
    assert "silent_zero_advantage" in {f.code for f in check_step(batch, ALL_MODES, layout).findings}
    check = check_step(batch, ["token_mean"], layout)
    assert {f.code for f in check.findings} == {"prompt_cut_by_mini_batch"}
    assert any("only with prompt_mean" in note for note in check.notes)


def test_zero_grad_causes_with_zero_and_nonfinite_weights():
    # Rows: L, A==0 tokens, non-finite tokens; weights 0.5, 0, nan, inf.
    loss = np.array([5, 5, 5, 5])
    zero = np.array([1, 1, 1, 1])
    nonfinite = np.array([1, 1, 1, 1])
    weight = np.array([0.5, 0.0, math.nan, math.inf])
    zv = np.array([True, False, False, False])
    at_mean = np.array([False, True, False, False])
    causes = zero_grad_causes(loss, zero, nonfinite, weight, zv, at_mean)
    # Every row: 1 non-finite. A==0: row 0 zero-variance, row 1 at mean, rows 2-3 zero advantage.
    # Finite non-zero A (3 per row): row 1 weight 0 -> zero_weight; rows 2 (nan) and 3 (inf) -> nonfinite_weight.
    assert causes == {
        "nonfinite_advantage": 4,
        "zero_variance_group": 1,
        "reward_at_group_mean": 1,
        "zero_advantage": 2,
        "zero_weight": 3,
        "nonfinite_weight": 6,
    }


def test_report_helpers():
    assert row_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert row_ranges([0, 2, 4, 6], limit=2) == "0, 2, … (4 rows)"
    assert row_ranges([]) == "none"
    assert layout_flags(Layout(mini_batch_size=8, dp_size=2, seed=3)) == "--mini-batch-size 8 --dp-size 2"
    assert layout_flags(Layout(order="shuffle", seed=3)) == "--order shuffle --seed 3"
    assert parse_fail_on(" Warning ") == "warning"
    with pytest.raises(AggscopeError, match=r"--fail-on 'fatal': expected one of error, warning, info, never"):
        parse_fail_on("fatal")
    report = run_checks([batch_of(list("AB"), [1, 1])], ["token_mean"])
    assert [f.code for f in report.findings] == ["singleton_group", "singleton_group"]
    assert report.fails("warning") and report.fails("info") and not report.fails("error") and not report.fails("never")
    assert list(report.to_dict())[:3] == ["findings", "zero_grad", "cut_prompts"]


def test_split_picture_marks_cut_prompts_and_silent_rows():
    batch = batch_of(list("AAAABBBBCCCC"), [1] * 12, [1.0, -1.0] * 6)
    report = run_checks([batch], ALL_MODES, Layout(mini_batch_size=6, dp_size=2))
    lines = split_picture(report.worst_step, width=100)
    lanes = [line for line in lines if line.startswith("mb ")]
    # Mini-batch 0: A A A | A B B (ranks of 3); B is cut (uppercase); B's rows 6-7 have no gradient.
    assert lanes == ["mb 0 │aaa¦aBB│ 6 rows, 2 prompts, 1 cut", "mb 1 │BBc¦ccc│ 6 rows, 2 prompts, 1 cut"]
    assert lines[lines.index(lanes[1]) + 1] == "     │^^     │"
    assert all(len(line) <= 100 for line in lines)
    wide = run_checks([batch_of([f"p{i // 8}" for i in range(4000)], [1] * 4000)], ["token_mean"], Layout(mini_batch_size=300))
    lines = split_picture(wide.worst_step, width=100)
    assert all(len(line) <= 100 for line in lines)
    assert "1 char = 5 rows" in lines[0] and lines[-1].startswith("… 2 more mini-batches")


# ---- the faulty sample ---------------------------------------------------------------------------
def test_faulty_sample_is_the_generator_output(tmp_path):
    written = write_faulty_sample(tmp_path)
    assert written.read_bytes() == FAULTY.read_bytes()
    # The clean default is untouched by the faulty generator.
    assert write_sample(tmp_path, SampleConfig()).read_bytes() == (REPO / "sample_data" / "rollouts.parquet").read_bytes()


def test_faulty_sample_every_finding():
    steps = list(open_rollouts(str(FAULTY)).iter_steps())
    layout = faulty_layout()
    assert layout == Layout(mini_batch_size=10)
    report = run_checks(steps, None, layout)
    assert report.modes == ALL_MODES
    rows = [rows_of(batch) for batch in steps]

    def finding(code: str, step: int, members: tuple[int, ...], uid: str | None = "") -> tuple:
        uid = rows[step][members[0]].uid if uid == "" else uid
        tokens = sum(rows[step][i].loss_tokens for i in members)
        return (code, CODES[code].severity, step, uid, members, tokens)

    size = FAULTY_CONFIG.group_size  # 4
    injected = {
        # step 0: NaN on the first loss token of row 0 (1 token); four masked tokens with advantages on row 1;
        # row `size` (prompt 1's first row, reward 1 in a 1,0,1,0 group) zeroed.
        ("nonfinite_advantage", "error", 0, rows[0][0].uid, (0,), 1),
        ("masked_token_advantage", "warning", 0, rows[0][1].uid, (1,), MASKED_SPAN[1] - MASKED_SPAN[0]),
        finding("zero_advantage", 0, (size,)),
        # step 1: prompt 1 kept its first row only (row 4); prompt 2 lost its last one (rows 5-7).
        finding("singleton_group", 1, (4,)),
        finding("incomplete_group", 1, (5, 6, 7)),
        # step 2: prompt 1's first row (4) moved to the end (31).
        finding("noncontiguous_uid", 2, (4, 5, 6, 31)),
    }
    from_layout = {
        # Mini-batches of 10 rows start at 10, 20, 30. Step 0 (groups of 4 at 0, 4, ..., 28): 10 cuts rows 8-11,
        # 30 cuts rows 28-31, 20 falls between groups.
        finding("prompt_cut_by_mini_batch", 0, (8, 9, 10, 11)),
        finding("prompt_cut_by_mini_batch", 0, (28, 29, 30, 31)),
        # Step 1 (groups start at 0, 4, 5, 8, 12, ...): 10 cuts rows 8-11.
        finding("prompt_cut_by_mini_batch", 1, (8, 9, 10, 11)),
        # Step 2 (groups at 0, 4-6, 7-10, 11-14, 15-18, 19-22, 23-26, 27-30, and row 31 of prompt 1).
        finding("prompt_cut_by_mini_batch", 2, (4, 5, 6, 31)),
        finding("prompt_cut_by_mini_batch", 2, (7, 8, 9, 10)),
        finding("prompt_cut_by_mini_batch", 2, (19, 20, 21, 22)),
        finding("prompt_cut_by_mini_batch", 2, (27, 28, 29, 30)),
        # The boundary prompt_mean drops the cut prompts' rows past the boundary: in step 0 rows 10-11 and
        # 30-31, which have non-zero advantages. Step 1's rows 10-11 have advantage 0 (a zero-variance group),
        # so no gradient is lost there; step 2 is not contiguous, so it is not checked.
        finding("silent_zero_advantage", 0, (10, 11)),
        finding("silent_zero_advantage", 0, (30, 31)),
        # Mini-batch 1 of step 0 counts 2 prompts instead of 3: rows 12-19 get 1.5x. In step 1 the same happens
        # to rows 12-19, and the zero-advantage tail rows 10-11 sit at weight 0.
        finding("rebased_prompt_mean_misweight", 0, tuple(range(12, 20)), None),
        finding("rebased_prompt_mean_misweight", 1, tuple(range(10, 20)), None),
    }
    zero_variance = set()
    for step, step_rows in enumerate(rows):
        by_uid: dict = {}
        for i, row in enumerate(step_rows):
            by_uid.setdefault(row.uid, []).append(i)
        for members in by_uid.values():
            if len(members) >= 2 and len({step_rows[i].reward for i in members}) == 1:
                zero_variance.add(finding("zero_variance_group", step, tuple(members)))
    assert len(zero_variance) == 8

    # Loss tokens without gradient (advantage 0 or NaN), per step and over the run: step 0 has 1,886 of
    # 5,850 (32.2%, a warning), step 1 3,219 of 5,151 (62.5%, an error), step 2 1,405 of 5,886 (23.9%, none);
    # the run 6,510 of 16,887 (38.6%, a warning).
    without = [[r.zero_adv + r.nonfinite_adv for r in step_rows] for step_rows in rows]
    assert [sum(w) for w in without] == [1886, 3219, 1405]
    assert [sum(r.loss_tokens for r in step_rows) for step_rows in rows] == [5850, 5151, 5886]
    no_gradient = {
        ("no_gradient_share", severity, step, None, tuple(i for i, w in enumerate(without[step]) if w), sum(without[step]))
        for step, severity in ((0, "warning"), (1, "error"))
    }
    run_wide = {("no_gradient_share", "warning", None, None, (), 6510)}
    expected = injected | from_layout | zero_variance | no_gradient
    assert as_tuples(report.findings) == expected | run_wide
    assert len(report.findings) == len(expected) + 1
    # The same list from the plain-loop reference (which works step by step).
    assert expected == set().union(*(expected_findings(batch, layout, ALL_MODES) for batch in steps))
    # Every fault the generator reports injecting is among them.
    _, faults = generate_faulty()
    for fault in faults:
        assert any(f.code == fault.code and f.step == fault.step and f.rows == fault.rows for f in report.findings), fault
    assert [f.severity for f in report.findings] == sorted(
        (f.severity for f in report.findings), key=["error", "warning", "info"].index
    )


def test_run_checks_on_an_opened_input_or_steps_in_memory_gives_one_report():
    rollouts = open_rollouts(str(FAULTY))
    steps = list(rollouts.iter_steps())
    layout = faulty_layout()
    expected = run_checks(steps, None, layout).to_dict()
    assert expected["modes"] == ALL_MODES  # modes=None: every mode that applies to the first step
    assert run_checks(iter(steps), None, layout).to_dict() == expected
    assert run_checks(rollouts, None, layout, engine=Engine()).to_dict() == expected
    assert run_checks(rollouts, ALL_MODES, layout, progress=list).to_dict() == expected
    assert run_checks([], None, layout).modes == []
    # lengths_estimated comes from the steps, however they are given.
    estimated = [steps[0], replace(steps[1], lengths_estimated=True), *steps[2:]]
    assert not expected["lengths_estimated"]
    assert run_checks(estimated, None, layout).lengths_estimated
    assert run_checks(iter(estimated), ALL_MODES, layout, engine=Engine()).lengths_estimated


def test_run_checks_without_modes_reads_an_opened_input_once(monkeypatch: pytest.MonkeyPatch):
    """The modes of modes=None come from the first step; on the local engine that step is not read a second time."""
    rollouts = open_rollouts(str(FAULTY))
    layout = faulty_layout()
    expected = run_checks(list(rollouts.iter_steps()), None, layout).to_dict()
    reads: list[int] = []
    plain = type(rollouts).iter_steps

    def counted(self):  # type: ignore[no-untyped-def]
        for batch in plain(self):
            reads.append(batch.step)
            yield batch

    monkeypatch.setattr(type(rollouts), "iter_steps", counted)
    assert run_checks(rollouts, None, layout).to_dict() == expected
    assert reads == rollouts.steps


def test_faulty_sample_zero_grad_and_cut_prompts():
    steps = list(open_rollouts(str(FAULTY)).iter_steps())
    layout = faulty_layout()
    report = run_checks(steps, None, layout)
    weights = run_weights(steps, default_modes(has_groups=True, max_seq_len=None), layout)
    for mode in ALL_MODES:
        causes = report.zero_grad[mode]
        summary = weights.total.modes[mode]
        assert sum(causes.values()) == summary.zero_grad_tokens + summary.nonfinite_grad_tokens
    # The NaN token (step 0, row 0) and the zeroed row `group_size` of step 0.
    assert report.zero_grad["token_mean"]["nonfinite_advantage"] == 1
    assert report.zero_grad["token_mean"]["zero_advantage"] == rows_of(steps[0])[FAULTY_CONFIG.group_size].loss_tokens
    expected_cuts = {level: [] for level in CUT_LEVELS}
    for batch in steps:
        for level, uids in cut_prompts(rows_of(batch), units_of(batch, layout)).items():
            expected_cuts[level] += [(batch.step, uid) for uid in uids]
    assert report.cut_prompts == expected_cuts
    assert len(report.cut_prompts["mini_batch"]) == 7


# ---- properties over random batches and layouts ----------------------------------------------------
ADVANTAGES = st.sampled_from([0.0, 0.0, 0.0, 1.0, -1.0, 0.5, math.nan, math.inf])
REWARDS = st.sampled_from([0.0, 1.0, 0.5, math.nan])


@st.composite
def random_batches(draw):
    n_rows = draw(st.integers(1, 18))
    uid_codes = draw(st.lists(st.integers(0, 5), min_size=n_rows, max_size=n_rows))
    if draw(st.booleans()):
        uid_codes.sort()  # contiguous groups
    lengths = draw(st.lists(st.integers(0, 4), min_size=n_rows, max_size=n_rows))
    per_row = draw(st.lists(ADVANTAGES, min_size=n_rows, max_size=n_rows))
    advantages, mask = [], []
    for row in range(n_rows):
        for _ in range(lengths[row]):
            overridden = draw(st.booleans()) and draw(st.booleans())
            advantages.append(draw(ADVANTAGES) if overridden else per_row[row])
            mask.append(draw(st.booleans()) or draw(st.booleans()))
    rewards = draw(st.none() | st.lists(REWARDS, min_size=n_rows, max_size=n_rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    has_uid = draw(st.integers(0, 9)) > 0
    return StepBatch.from_flat(
        torch.tensor(advantages, dtype=torch.float32),
        torch.tensor(mask, dtype=torch.bool),
        offsets,
        uids=[f"u{c}" for c in uid_codes] if has_uid else None,
        rewards=rewards,
        step=draw(st.integers(0, 3)),
    )


@st.composite
def random_layouts(draw):
    by = draw(st.sampled_from(["none", "sequences", "prompts"]))
    micro_by = draw(st.sampled_from(["none", "rows", "rows", "tokens"]))  # tokens: verl's use_dynamic_bsz
    prompt_tokens = draw(st.integers(0, 2))
    return Layout(
        mini_batch_size=draw(st.integers(1, 8)) if by == "sequences" else None,
        mini_batch_prompts=draw(st.integers(1, 4)) if by == "prompts" else None,
        micro_batch_size=draw(st.integers(1, 4)) if micro_by == "rows" else None,
        micro_batch_tokens=draw(st.integers(4 + prompt_tokens, 14)) if micro_by == "tokens" else None,
        prompt_tokens=prompt_tokens,
        # token budgets on one rank: uneven rank shards can leave a rank too few rows for the agreed
        # micro-batch count, which verl refuses (tests/core/test_partition.py covers several ranks)
        dp_size=1 if micro_by == "tokens" else draw(st.integers(1, 3)),
        order=draw(st.sampled_from(["logged", "logged", "grouped", "shuffle"])),
        seed=draw(st.integers(0, 3)),
    )


MODE_SETS = st.sampled_from([ALL_MODES, ["token_mean"], ["token_mean", "prompt_mean"], ["token_mean_legacy", "sequence_mean"]])
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _applicable(batch: StepBatch, layout: Layout, modes: list[str]) -> tuple[Layout, list[str]]:
    if not batch.has_groups:
        layout = layout.replace(order="logged" if layout.order == "grouped" else layout.order, mini_batch_prompts=None)
        modes = [m for m in modes if m != "prompt_mean"] or ["token_mean"]
    return layout, modes


@PROPERTY_SETTINGS
@given(batch=random_batches(), layout=random_layouts(), modes=MODE_SETS)
def test_findings_equal_the_plain_loop_reference(batch, layout, modes):
    layout, modes = _applicable(batch, layout, modes)
    check = check_step(batch, modes, layout)
    assert as_tuples(check.findings) == expected_findings(batch, layout, modes)
    assert len(check.findings) == len(as_tuples(check.findings))
    # handed the weights the engine computed (as the report's breakdown does), check finds the same
    analysis = analyse_step(batch, resolve_modes(modes), layout)
    row_weights = {name: result.row_weight for name, result in analysis.weights.items()}
    given_weights = check_step(batch, modes, layout, analysis.split, row_weights=row_weights)
    assert given_weights.findings == check.findings and given_weights.zero_grad == check.zero_grad


@PROPERTY_SETTINGS
@given(batch=random_batches(), layout=random_layouts())
def test_cut_prompts_iff_rows_span_more_than_one_unit(batch, layout):
    layout, _ = _applicable(batch, layout, [])
    check = check_step(batch, ["token_mean"], layout)
    if not batch.has_groups:
        assert check.cut_prompts == {level: () for level in CUT_LEVELS}
        return
    expected = cut_prompts(rows_of(batch), units_of(batch, layout))
    assert {level: list(uids) for level, uids in check.cut_prompts.items()} == expected


@PROPERTY_SETTINGS
@given(batch=random_batches(), layout=random_layouts())
def test_boundary_prompt_mean_equals_the_pseudocode(batch, layout):
    if not batch.has_groups:
        return
    split = split_batch(batch, layout)
    units = units_of(batch, layout)
    rows = rows_of(batch)
    expected = rebased_prompt_mean(rows, units)
    got = boundary_prompt_mean(batch.stats.loss_tokens, batch.group_ids, split).tolist()
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    # And the loop version of the canonical mode agrees with the engine's.
    from aggscope.core.weights import compute_weights

    canonical = compute_weights(batch, "prompt_mean", layout, split).row_weight.tolist()
    assert canonical == pytest.approx(canonical_prompt_mean(rows, units), rel=1e-12, abs=0)


@PROPERTY_SETTINGS
@given(batch=random_batches(), layout=random_layouts(), modes=MODE_SETS)
def test_zero_grad_table_sums_to_the_weights_counts(batch, layout, modes):
    layout, modes = _applicable(batch, layout, modes)
    check = check_step(batch, modes, layout)
    weights = run_weights([batch], default_modes(has_groups=batch.has_groups, max_seq_len=None), layout)
    from aggscope.core.weights import compute_weights

    for mode in modes:
        summary = weights.steps[0].modes[mode]
        assert sum(check.zero_grad[mode].values()) == summary.zero_grad_tokens + summary.nonfinite_grad_tokens
        row_weight = compute_weights(batch, mode, layout).row_weight.tolist()
        by_token = zero_grad_causes_by_token(batch, row_weight)
        assert check.zero_grad[mode] == {cause: by_token[cause] for cause in ZERO_GRAD_CAUSES}


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(random_batches(), min_size=1, max_size=3), layout=random_layouts())
def test_merging_steps_keeps_every_step(batches, layout):
    batches = [b for b in batches if b.has_groups] or [batch_of(["a"], [1])]
    checks = [check_step(b, ["token_mean", "prompt_mean"], layout) for b in batches]
    accumulator = CheckAccumulator(layout)
    for check in checks:
        accumulator.add(check)
    report = accumulator.result()
    # every step's finding, plus the run-wide no_gradient_share of a run of several steps
    step_findings = [f for f in report.findings if f.step is not None]
    assert len(step_findings) == sum(len(c.findings) for c in checks)
    run_wide = [f for f in report.findings if f.step is None]
    assert all(f.code == "no_gradient_share" for f in run_wide) and (len(checks) > 1 or not run_wide)
    for mode in ("token_mean", "prompt_mean"):
        for cause in ZERO_GRAD_CAUSES:
            assert report.zero_grad[mode][cause] == sum(c.zero_grad[mode][cause] for c in checks)
    assert report.loss_tokens == sum(c.loss_tokens for c in checks)
    for level in CUT_LEVELS:
        assert report.cut_prompts[level] == [(c.step, uid) for c in checks for uid in c.cut_prompts[level]]


def test_ranks_first_cuts_and_lanes_follow_the_mini_batches_not_the_positions() -> None:
    # 8 rows, 2 ranks, mini-batches of 4, verl's composition: mini-batch 0 = rows 0, 1, 4, 5.
    # Prompt b (rows 1-4) starts and ends in mini-batch 0 but rows 2-3 are in mini-batch 1.
    uids = ["a", "b", "b", "b", "b", "c", "c", "c"]
    batch = StepBatch.from_flat(torch.ones(16), torch.ones(16), np.arange(0, 17, 2), uids=uids)
    layout = Layout(mini_batch_size=4, dp_size=2, composition="ranks_first")
    check = check_step(batch, ["token_mean"], layout)
    cut = {f.uid: f.code for f in check.findings if f.code.startswith("prompt_cut")}
    assert cut == {"b": "prompt_cut_by_mini_batch", "c": "prompt_cut_by_mini_batch"}
    lane_rows = [line for line in split_picture(check.lanes, 100) if line.startswith("mb ")]
    assert [line.split("│")[1].strip() for line in lane_rows] == ["aB¦BC", "BB¦CC"]


def test_finding_to_dict_holds_every_field_in_order():
    # to_dict spells the fields out (for speed): one added to Finding must be added there too
    finding = Finding("zero_advantage", "error", 3, "u1", (1, 2), 7, "text", ("token_mean",))
    assert finding.to_dict() == {**asdict(finding), "rows": [1, 2], "modes": ["token_mean"]}
    assert list(finding.to_dict()) == [f.name for f in fields(Finding)]
