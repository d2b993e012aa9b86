"""aggscope's length-balanced partitions against verl 0.9.1's own ``seqlen_balancing`` (from its wheel).

verl's ``rearrange_micro_batches`` runs per rank in threads (``framework_wheels.verl_micro_batches``)
whose stand-in ``torch.distributed.all_reduce`` really reduces over them, so the micro-batch count
and the within-budget test are agreed over ranks as in a multi-GPU run.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
import torch
from framework_wheels import load_verl, verl_micro_batches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggscope.core.layout import Layout
from aggscope.core.partition import balance_batch_order, balanced_partitions, token_budget_micro_batches, workload
from aggscope.core.split import split_step
from aggscope.errors import AggscopeError


@functools.cache
def verl() -> types.SimpleNamespace:
    return load_verl()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 40), min_size=1, max_size=30), data=st.data())
def test_balanced_partitions_equal_verls_karmarkar_karp(values: list[int], data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(values)))
    equal = data.draw(st.booleans()) and len(values) % k == 0
    expected = verl().seqlen_balancing.karmarkar_karp(values, k, equal)
    try:
        got = balanced_partitions(values, k, equal_size=equal)
    except AggscopeError:
        assert any(not part for part in expected)  # verl's check refuses an empty set too
        return
    assert got == [sorted(part) for part in expected]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 3000), min_size=2, max_size=24), dp=st.sampled_from([1, 2, 3, 4]))
def test_balance_batch_order_equals_verls(lengths: list[int], dp: int) -> None:
    lengths = lengths[: len(lengths) // dp * dp] or lengths[:dp]
    if len(lengths) < dp:
        return
    costs = verl().seqlen_balancing.calculate_workload(torch.tensor(lengths))
    partitions = verl().seqlen_balancing.get_seqlen_balanced_partitions(costs, k_partitions=dp, equal_size=True)
    assert balance_batch_order(lengths, dp) == [row for part in partitions for row in part]
    assert [workload(n) for n in lengths] == costs.tolist()


@st.composite
def ranked_lengths(draw: st.DrawFn) -> tuple[list[list[int]], int]:
    dp = draw(st.integers(1, 4))
    rows = draw(st.integers(1, 12))
    lengths = [draw(st.lists(st.integers(1, 60), min_size=rows, max_size=rows)) for _ in range(dp)]
    budget = draw(st.integers(max(max(r) for r in lengths) - 5, 200))
    return lengths, budget


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=ranked_lengths())
def test_token_budget_micro_batches_equal_verls_rearrange(case: tuple[list[list[int]], int]) -> None:
    rank_lengths, budget = case
    expected = verl_micro_batches(verl().seqlen_balancing, rank_lengths, budget)
    if isinstance(expected, str):
        with pytest.raises(AggscopeError, match="verl"):
            token_budget_micro_batches(rank_lengths, budget)
        return
    assert token_budget_micro_batches(rank_lengths, budget) == expected


def test_token_budget_hand_worked() -> None:
    # one rank, lengths 5 4 3 2 (14 tokens), budget 7: ceil(14 / 7) = 2 micro-batches; the balanced
    # split by cost 24576 L + L^2 is {5, 2} and {4, 3} (7 tokens each; 29 + 25 > 16 + 9 squared, so
    # {5, 2} is heavier): sorted by cost desc [{0, 3}, {1, 2}] -> [::2][::-1] + [1::2] = same order
    assert token_budget_micro_batches([[5, 4, 3, 2]], 7) == [[[0, 3], [1, 2]]]
    # budget 6: ceil(14 / 6) = 3 micro-batches, {5}, {4} and {3, 2}
    assert sorted(token_budget_micro_batches([[5, 4, 3, 2]], 6)[0]) == [[0], [1], [2, 3]]
    # two ranks agree on the larger count: rank 1 alone would take one micro-batch
    both = token_budget_micro_batches([[5, 4, 3, 2], [1, 1, 1]], 7)
    assert [len(micros) for micros in both] == [2, 2]


def test_token_budget_refuses_a_row_over_budget() -> None:
    with pytest.raises(AggscopeError, match=r"sequence of 9 tokens .* longer than the micro-batch token budget 8"):
        token_budget_micro_batches([[9, 1]], 8)


def test_split_with_token_budget_groups_micro_batches_in_trainer_order() -> None:
    # 2 ranks, ranks_first, one mini-batch of 8: rank 0 holds rows 0-3, rank 1 rows 4-7
    lengths = np.array([5, 4, 3, 2, 1, 1, 1, 1])
    layout = Layout(mini_batch_size=8, dp_size=2, composition="ranks_first", micro_batch_tokens=7)
    split = split_step(8, None, layout, 0, lengths)
    assert split.rank.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert split.micro_batch[[0, 3]].tolist() == [0, 0] and split.micro_batch[[1, 2]].tolist() == [1, 1]
    assert split.n_micro_units == 4  # both ranks run 2 micro-batches (verl syncs the count)
    assert split.order.tolist()[:4] == [0, 3, 1, 2]  # trainer positions list micro-batch by micro-batch


def test_split_needs_lengths_for_token_budgets() -> None:
    with pytest.raises(AggscopeError, match="--micro-batch-tokens needs every row's sequence length"):
        split_step(4, None, Layout(micro_batch_tokens=10), 0)
    with pytest.raises(AggscopeError, match="not both"):
        Layout(micro_batch_size=2, micro_batch_tokens=10)


def test_balanced_order_is_verls_rank_assignment() -> None:
    # lengths 1 2 3 4 over 2 ranks: {1, 4} and {2, 3} (cost sums 5 * 24576 + 17 and + 13)
    split = split_step(4, None, Layout(order="balanced", dp_size=2, composition="ranks_first"), 0, np.array([1, 2, 3, 4]))
    assert split.order.tolist() == [0, 3, 1, 2]
    assert split.rank.tolist() == [0, 1, 1, 0]
    with pytest.raises(AggscopeError, match="multiple of --dp-size 2"):
        split_step(3, None, Layout(order="balanced", dp_size=2), 0, np.array([1, 2, 3]))
