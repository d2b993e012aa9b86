"""The verdicts on the whole step and the whole run (issue 14): ``no_gradient_share``,
``truncated_response``, ``unused_dump_field``; findings per mode and per trainer (issue 12 §5)."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_checks import FAULTY, batch_of  # the same tiny batches: row i has lengths[i] tokens of advantage i

import aggscope.analysis.checks.truncation as truncation_module
from aggscope.analysis.checks import (
    CheckOptions,
    NoGradThresholds,
    check_step,
    parse_max_no_grad_share,
    parse_max_response_len,
    response_lengths,
    run_checks,
)
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def codes(findings, code):
    return [f for f in findings if f.code == code]


# ---- no_gradient_share ----------------------------------------------------------------------------
def test_thresholds_hand_worked():
    default = NoGradThresholds()
    assert [default.severity(s) for s in (0.0, 0.25, 0.2501, 0.5, 0.5001, 1.0)] == [
        None,
        None,
        "warning",
        "warning",
        "error",
        "error",
    ]
    # 100% is an error even when the user allows every share below it
    assert NoGradThresholds(warning=1.0, error=1.0).severity(1.0) == "error"
    assert NoGradThresholds(warning=1.0, error=1.0).severity(0.99) is None


def test_parse_max_no_grad_share():
    assert parse_max_no_grad_share("0.4") == NoGradThresholds(0.25, 0.4)
    assert parse_max_no_grad_share("10%") == NoGradThresholds(0.1, 0.1)
    assert parse_max_no_grad_share(" 20% , 0.6") == NoGradThresholds(0.2, 0.6)
    for text, message in [
        ("abc", "--max-no-grad-share 'abc': 'abc' is not a share (0 to 1, or 0% to 100%)"),
        ("150%", "--max-no-grad-share '150%': '150%' is above 100%"),
        ("0.6,0.4", "--max-no-grad-share '0.6,0.4': the warning share is above the error share"),
        ("1,2,3", "--max-no-grad-share '1,2,3': give ERROR or WARNING,ERROR, e.g. 0.5 or 25%,50%"),
    ]:
        with pytest.raises(AggscopeError) as caught:
            parse_max_no_grad_share(text)
        assert caught.value.message == message


def test_no_gradient_share_hand_worked():
    # Prompt a: rewards 1, 1 (zero variance), L 3 and 1, advantage 0. Prompt b: rewards 0, 1, advantages -1, 1,
    # L 2 and 2. Without gradient: 3 + 1 = 4 of 8 loss tokens = 50%: a warning (not above 50%).
    batch = batch_of(["a", "a", "b", "b"], [3, 1, 2, 2], [0.0, 0.0, -1.0, 1.0], rewards=[1.0, 1.0, 0.0, 1.0])
    (finding,) = codes(check_step(batch, ["token_mean", "sequence_mean"]).findings, "no_gradient_share")
    assert (finding.severity, finding.step, finding.uid, finding.rows, finding.tokens, finding.modes) == (
        "warning",
        0,
        None,
        (0, 1),
        4,
        (),
    )
    assert finding.message.startswith(
        "4 of 8 loss tokens in this step (50.0%) get no gradient (w x A is 0 or not finite) under every mode"
    )
    assert "Causes: zero_variance_group 4 (50.0%), 1 of 2 prompts, every reward 1. Mostly zero_variance_group:" in (
        finding.message
    )
    assert "dynamic sampling" in finding.message and "reward bug" in finding.message
    # --max-no-grad-share 0.4: 50% is now above the error share.
    options = CheckOptions(no_grad=parse_max_no_grad_share("0.4"))
    (strict,) = codes(check_step(batch, ["token_mean"], options=options).findings, "no_gradient_share")
    assert strict.severity == "error"
    # 25%,60%: a warning still.
    options = CheckOptions(no_grad=parse_max_no_grad_share("25%,60%"))
    assert codes(check_step(batch, ["token_mean"], options=options).findings, "no_gradient_share")[0].severity == "warning"


def test_no_gradient_share_over_the_run():
    # Step 0: one zero-variance prompt, 4 of 4 tokens without gradient (100%: an error). Step 1: 0 of 4.
    # The run: 4 of 8 = 50%, a warning, with step None; the dominant cause is named.
    learns_nothing = batch_of(["a", "a"], [2, 2], [0.0, 0.0], rewards=[0.0, 0.0], step=0)
    learns = batch_of(["b", "b"], [2, 2], [-1.0, 1.0], rewards=[0.0, 1.0], step=1)
    report = run_checks([learns_nothing, learns], ["token_mean"])
    found = {(f.step, f.severity, f.tokens) for f in codes(report.findings, "no_gradient_share")}
    assert found == {(0, "error", 4), (None, "warning", 4)}
    run_wide = next(f for f in report.findings if f.step is None)
    assert run_wide.message.startswith("4 of 8 loss tokens over the run (50.0%) get no gradient")
    assert "Mostly zero_variance_group" in run_wide.message
    assert report.fails("error")
    # One step alone gets no run-wide finding (its own is the run's).
    assert [f.step for f in codes(run_checks([learns_nothing], ["token_mean"]).findings, "no_gradient_share")] == [0]


def test_dominant_cause_names_its_advice():
    # Rewards 0, 0.5, 1: row 1 is at the group mean; its 6 of 8 tokens have advantage 0 (75%: an error).
    batch = batch_of(["g"] * 3, [1, 6, 1], [-1.0, 0.0, 1.0], rewards=[0.0, 0.5, 1.0])
    (finding,) = codes(check_step(batch, ["token_mean"]).findings, "no_gradient_share")
    assert finding.severity == "error"
    assert "Causes: reward_at_group_mean 6 (75.0%). Mostly reward_at_group_mean:" in finding.message
    assert "finer-grained reward" in finding.message


# ---- truncated_response ---------------------------------------------------------------------------
def test_response_lengths_start_at_the_first_loss_token():
    # Row 0: prompt tokens 0-1 masked, then 3 tokens (a masked tool output inside counts): 3. Row 1: no loss
    # token: 0. Row 2: all 2 tokens.
    mask = [False, False, True, False, True, False, False, True, True]
    batch = batch_of(None, [5, 2, 2], [1.0, 1.0, 1.0], mask=mask)
    assert response_lengths(batch).tolist() == [3, 0, 2]


@pytest.mark.parametrize("chunk", [1, 7, 1 << 18])
def test_response_lengths_in_chunks_of_rows_are_a_per_row_loop(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(truncation_module, "LENGTHS_CHUNK", chunk)
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 25, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    mask = rng.random(int(offsets[-1])) < 0.3
    batch = StepBatch.from_flat(rng.normal(size=mask.size), mask, offsets)
    expected = []
    for start, end in itertools.pairwise(offsets.tolist()):
        loss = np.flatnonzero(mask[start:end])
        expected.append(int(end - start - loss[0]) if loss.size else 0)
    assert response_lengths(batch).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), max_size=6), min_size=1, max_size=8))
def test_response_lengths_equal_a_loop_over_rows(rows):
    # Empty rows and rows without loss tokens included: a plain loop over each row's mask.
    lengths = [len(row) for row in rows]
    mask = [m for row in rows for m in row]
    batch = batch_of(None, lengths, [1.0] * len(rows), mask=mask)
    expected = [len(row) - row.index(True) if True in row else 0 for row in rows]
    assert response_lengths(batch).tolist() == expected


def test_truncated_response_hand_worked():
    # Lengths 4, 2, 4, 3 with cap 4: rows 0 and 2 (8 loss tokens) reach it; their rewards 0, 0 against 1, 1.
    batch = batch_of(["a", "a", "b", "b"], [4, 2, 4, 3], [1.0, -1.0, 1.0, -1.0], rewards=[0.0, 1.0, 0.0, 1.0])
    options = CheckOptions(response_cap=4)
    (finding,) = codes(check_step(batch, ["token_mean"], options=options).findings, "truncated_response")
    assert (finding.severity, finding.rows, finding.tokens) == ("warning", (0, 2), 8)
    assert finding.message.startswith(
        "2 responses of 4 (50.0%) reach the response cap of 4 tokens (--max-response-len): they were cut off before"
    )
    assert "Their mean reward is 0, every one 0, against 1 for the other responses." in finding.message
    assert "overlong" in finding.message
    # The same rewards on both sides: an info, no overlong advice.
    same = batch_of(["a", "a", "b", "b"], [4, 2, 4, 3], [1.0, -1.0, 1.0, -1.0], rewards=[1.0, 0.0, 0.0, 1.0])
    (info,) = codes(check_step(same, ["token_mean"], options=options).findings, "truncated_response")
    assert info.severity == "info" and "no real difference" in info.message and "overlong" not in info.message
    # Without a cap: no finding, and a note when several rows share the longest length.
    check = check_step(batch, ["token_mean"])
    assert not codes(check.findings, "truncated_response")
    assert any("several responses of a step end at its longest length, 4 tokens" in note for note in check.notes)
    with pytest.raises(AggscopeError, match=r"--max-response-len 0: expected a whole number of tokens >= 1"):
        parse_max_response_len(0)


# ---- per mode and per trainer ---------------------------------------------------------------------
def test_empty_sequence_only_under_modes_that_count_sequences():
    batch = batch_of(["a", "a"], [2, 1], [1.0, -1.0], mask=[True, True, False])
    assert not codes(check_step(batch, ["token_mean", "token_sum"]).findings, "empty_sequence")
    (finding,) = codes(check_step(batch, ["token_mean", "sequence_mean"]).findings, "empty_sequence")
    assert finding.modes == ("sequence_mean",) and "(sequence_mean)" in finding.message


def _faulty_steps():
    return list(open_rollouts(str(FAULTY)).iter_steps())


def test_skyrl_findings_only_when_skyrl_may_train():
    steps, layout = _faulty_steps(), Layout(mini_batch_size=10)
    modes = ["token_mean", "prompt_mean"]
    skyrl_codes = {"silent_zero_advantage", "rebased_prompt_mean_misweight", "noncontiguous_uid"}
    for trainer in (None, "skyrl"):
        found = {f.code for f in run_checks(steps, modes, layout, options=CheckOptions(trainer=trainer)).findings}
        assert skyrl_codes <= found, trainer
    verl = run_checks(steps, modes, layout, options=CheckOptions(trainer="verl"))
    assert not skyrl_codes & {f.code for f in verl.findings}
    assert any("model SkyRL; the trainer here is verl, so they do not run" in note for note in verl.notes)


def test_for_mode_keeps_the_findings_of_that_mode():
    report = run_checks(_faulty_steps(), ["token_mean", "token_mean_legacy", "prompt_mean"], Layout(mini_batch_size=10))
    token_mean = report.for_mode("token_mean")
    assert "silent_zero_advantage" in {f.code for f in report.findings}
    assert not {"silent_zero_advantage", "rebased_prompt_mean_misweight"} & {f.code for f in token_mean.findings}
    assert list(token_mean.zero_grad) == ["token_mean"] and token_mean.modes == ["token_mean"]
    assert {f.code for f in report.for_mode("prompt_mean").findings} >= {"silent_zero_advantage"}
    # A micro-batch/rank cut is a warning only for token_mean_legacy.
    legacy = Layout(mini_batch_size=16, micro_batch_size=2)
    raised = run_checks(_faulty_steps(), ["token_mean", "token_mean_legacy"], legacy)
    micro = {f.severity for f in raised.findings if f.code == "prompt_cut_by_micro_batch"}
    assert micro == {"warning"}
    assert {f.severity for f in raised.for_mode("token_mean").findings if f.code == "prompt_cut_by_micro_batch"} == {"info"}


# ---- unused_dump_field ----------------------------------------------------------------------------
@pytest.mark.skipif(not (REAL / "atropos_rubiks_groups.jsonl").exists(), reason="real dumps not present")
def test_atropos_per_token_fields_are_named():
    rollouts = open_rollouts(str(REAL / "atropos_rubiks_groups.jsonl"))
    assert [name for name, _ in rollouts.unused_fields] == ["token_weights", "token_scores"]
    report = run_checks(rollouts, ["token_mean"], unused_fields=rollouts.unused_fields)
    found = codes(report.findings, "unused_dump_field")
    assert [(f.severity, f.step, f.tokens) for f in found] == [("warning", None, 0)] * 2
    assert found[0].message.startswith("the dump carries 'token_weights', which these weights do not use")
    # A dump without them names none.
    assert open_rollouts(str(REAL / "atropos_cybersec_objreward.jsonl")).unused_fields == ()
