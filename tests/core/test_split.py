"""The splits ``split_step(..., shared=True)`` keeps: steps of the same shape share one, and a kept split is always the
one the step's own inputs give (checked against a split made afresh for every call)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggscope.core import split as split_module
from aggscope.core.layout import Layout
from aggscope.core.split import Split, split_step

LAYOUTS = [
    Layout(),
    Layout(mini_batch_size=4, dp_size=2, micro_batch_size=1),
    Layout(mini_batch_prompts=2, dp_size=2),
    Layout(order="grouped", mini_batch_size=3),
    Layout(order="shuffle", seed=3, mini_batch_size=4),
    Layout(micro_batch_tokens=40, dp_size=2),
    Layout(order="balanced", dp_size=2, composition="ranks_first", mini_batch_size=4),
    Layout(mini_batch_size=4, dp_size=2, composition="ranks_first", rank_shuffle_seed=5, passes=2),
]


def _fields(split: Split) -> list[object]:
    return [
        split.order.tolist(),
        split.position.tolist(),
        split.mini_batch.tolist(),
        split.rank.tolist(),
        split.micro_batch.tolist(),
        split.rank_unit.tolist(),
        split.micro_unit.tolist(),
        split.n_mini_batches,
    ]


def test_steps_of_one_shape_share_one_read_only_split() -> None:
    groups = np.repeat(np.arange(3), 4)
    first = split_step(12, groups, Layout(mini_batch_size=4), 0, shared=True)
    again = split_step(12, groups.copy(), Layout(mini_batch_size=4), 7, shared=True)
    assert again is first
    with pytest.raises(ValueError):
        first.mini_batch[0] = 5
    # a layout that reads the uids, the step or the lengths does not share across them
    grouped = Layout(order="grouped")
    assert split_step(12, groups, grouped, 0, shared=True) is not split_step(12, groups[::-1].copy(), grouped, 0, shared=True)
    shuffled = Layout(order="shuffle")
    assert (
        split_step(12, groups, shuffled, 0, shared=True).order.tolist()
        != split_step(12, groups, shuffled, 1, shared=True).order.tolist()
    )
    # a large step's split is not kept (nor its arrays made read-only): the kept ones stay small
    large = split_module._KEPT_SPLIT_ROWS + 1
    assert split_step(large, None, Layout(), 0, shared=True) is not split_step(large, None, Layout(), 0, shared=True)
    # the public split_step makes a split of its own every time, its arrays the caller's
    mine = split_step(12, groups, Layout(mini_batch_size=4), 0)
    assert mine is not first and mine.mini_batch.flags.writeable


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.integers(0, len(LAYOUTS) - 1),
            st.integers(2, 5).flatmap(lambda g: st.lists(st.integers(0, g - 1), min_size=4, max_size=4)),
            st.integers(0, 3),
            st.lists(st.integers(1, 20), min_size=8, max_size=8),
            st.integers(0, 1),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_kept_split_is_the_one_its_inputs_give(calls: list[tuple[int, list[int], int, list[int], int]]) -> None:
    for layout_index, uids, step, lengths, pass_index in calls:
        layout = LAYOUTS[layout_index]
        codes = np.unique(np.repeat(uids, 2), return_inverse=True)[1].astype(np.int64)  # 8 rows, 2 per uid
        _, first = np.unique(codes, return_index=True)
        codes = np.argsort(np.argsort(first))[codes]  # numbered by first appearance, as readers number them
        seq_lengths = np.array(lengths, dtype=np.int64)
        pass_index = pass_index if pass_index < layout.passes else 0
        got = split_step(8, codes, layout, step, seq_lengths, pass_index, shared=True)
        fresh = split_step(8, codes, layout, step, seq_lengths, pass_index)
        assert _fields(got) == _fields(fresh)
