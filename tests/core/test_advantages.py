"""Outcome advantages (grpo, dr_grpo, rloo): hand-worked numbers and plain loops over groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggscope.core.advantages import ESTIMATORS, outcome_advantages, resolve_estimator
from aggscope.errors import AggscopeError
from aggscope.samples.generate import grpo_advantages


def loop_advantages(rewards: list[float], groups: list[int], estimator: str) -> list[float]:
    """The estimators written out per row, one group at a time (verl's definitions)."""
    out = []
    for row, reward in enumerate(rewards):
        members = [rewards[i] for i in range(len(rewards)) if groups[i] == groups[row]]
        n = len(members)
        if n == 1:
            out.append(reward)  # verl: mean 0, std 1 for a group of one
            continue
        if len(set(members)) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / n
        if estimator == "grpo":
            std = math.sqrt(sum((m - mean) ** 2 for m in members) / (n - 1))
            out.append((reward - mean) / (std + 1e-6))
        elif estimator == "dr_grpo":
            out.append(reward - mean)
        else:
            out.append(reward - (sum(members) - reward) / (n - 1))
    return out


def test_hand_worked_group() -> None:
    # group a: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735...
    # grpo: +-0.5 / (0.57735 + 1e-6); dr_grpo: +-0.5; rloo: 1 - (1/3) = 2/3 and 0 - 2/3 = -2/3.
    # group b: one row with reward 0.7 -> its raw reward in every estimator.
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.7])
    groups = np.array([0, 0, 0, 0, 1])
    std = math.sqrt(1 / 3)
    grpo = outcome_advantages(rewards, groups, "grpo")
    assert grpo.tolist() == pytest.approx(
        [0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6), 0.7], rel=1e-12
    )
    assert outcome_advantages(rewards, groups, "dr_grpo").tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.7], rel=1e-12)
    assert outcome_advantages(rewards, groups, "rloo").tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.7], rel=1e-12)


def test_equal_rewards_give_exactly_zero_even_when_the_mean_is_inexact() -> None:
    # 0.1 * 3 / 3 is 0.10000000000000002 in floating point: r - mean would be -1.4e-17, and
    # grpo would divide that by (tiny std + 1e-6); a zero-variance group must give exactly 0.
    rewards = np.array([0.1, 0.1, 0.1])
    for estimator in ESTIMATORS:
        assert outcome_advantages(rewards, np.zeros(3, dtype=np.int64), estimator).tolist() == [0.0, 0.0, 0.0]


def test_non_finite_rewards_are_data() -> None:
    advantages = outcome_advantages(np.array([1.0, np.nan, 0.0, 1.0]), np.array([0, 0, 1, 1]), "grpo")
    assert np.isnan(advantages[:2]).all() and np.isfinite(advantages[2:]).all()


def test_sample_generator_uses_the_same_grpo() -> None:
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = np.array([0, 0, 0, 1, 1, 2])
    assert np.array_equal(grpo_advantages(rewards, groups), outcome_advantages(rewards, groups, "grpo"))


def test_unknown_estimator_lists_the_valid_ones() -> None:
    with pytest.raises(AggscopeError, match="choose one of grpo, dr_grpo, rloo"):
        resolve_estimator("ppo")
    assert resolve_estimator("dr-grpo") == "dr_grpo"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.25])), min_size=1, max_size=30),
    st.sampled_from(ESTIMATORS),
)
def test_matches_plain_loop(rows: list[tuple[int, float]], estimator: str) -> None:
    groups = [g for g, _ in rows]
    rewards = [r for _, r in rows]
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    got = outcome_advantages(np.asarray(rewards), codes, estimator)
    np.testing.assert_allclose(got, loop_advantages(rewards, groups, estimator), rtol=1e-12, atol=1e-12)
