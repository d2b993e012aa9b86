"""Several steps at once (``check_steps``, ``weigh_steps``, ``Stack``) give each step's own results.

``check_steps`` and ``weigh_steps`` compute the per-row work of many steps once, on the steps stacked
with run-wide ids; these tests hold them to the step-by-step results (``check_step`` of one step, whose
findings ``test_checks`` holds to a plain-loop reference, and ``weigh_modes``), field by field and bit
for bit, over random runs and layouts, including the runs that cannot stack (uids or rewards in some
steps only) and a registered mode that does not.
"""

from dataclasses import fields, is_dataclass, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checks import ALL_MODES, _applicable, batch_of, random_batches, random_layouts

from aggscope.analysis.check_settings import CheckOptions
from aggscope.analysis.checks import StepCheck, check_step, check_steps
from aggscope.core import modes as modes_module
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import register, resolve_modes
from aggscope.core.stack import Stack
from aggscope.core.weights import analyse_step, analyse_steps, split_batch, weigh_modes, weigh_steps
from aggscope.errors import AggscopeError

RUN_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STACKING_MODES = [*ALL_MODES, "sequence_mean_nonempty", "seq_mean_token_sum_norm_padded"]


def _bits(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=np.float64).tobytes()


def assert_same(got: object, want: object, where: str = "check") -> None:
    """Equal field by field (dataclasses), element by element (arrays)."""
    if is_dataclass(got) and is_dataclass(want):
        assert type(got) is type(want), where
        for field in fields(got):
            assert_same(getattr(got, field.name), getattr(want, field.name), f"{where}.{field.name}")
    elif isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and isinstance(want, np.ndarray), where
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), where
    else:
        assert got == want, where


def assert_same_check(got: StepCheck, want: StepCheck) -> None:
    assert_same(got, want)


@st.composite
def runs(draw):
    """Two to four steps that stack: all with uids or none, all with rewards or none, numbered in order."""
    steps = draw(st.lists(random_batches(), min_size=2, max_size=4))
    with_uids = steps[0].group_ids is not None
    with_rewards = steps[0].rewards is not None
    kept = [s for s in steps if (s.group_ids is not None) == with_uids and (s.rewards is not None) == with_rewards]
    return [_renumbered(batch, index) for index, batch in enumerate(kept)]


def _renumbered(batch: StepBatch, step: int) -> StepBatch:
    return replace(batch, step=step)


@st.composite
def run_layouts(draw):
    """``test_checks``'s layouts, and verl's: ranks sharded first, its shuffle, several passes, a horizon."""
    layout = draw(random_layouts())
    layout = layout.replace(passes=draw(st.sampled_from([1, 1, 2, 3])), max_seq_len=draw(st.sampled_from([None, 8])))
    if draw(st.integers(0, 3)) == 0 and layout.mini_batch_prompts is None:
        size = layout.mini_batch_size
        if size is not None:
            size = max(layout.dp_size, size - size % layout.dp_size)
        shuffle = draw(st.sampled_from([None, 0, 5]))
        layout = layout.replace(composition="ranks_first", mini_batch_size=size, rank_shuffle_seed=shuffle)
    return layout


def _usable(batches: list[StepBatch], layout: Layout, modes: list[str]) -> tuple[Layout, list[str]]:
    for batch in batches:
        layout, modes = _applicable(batch, layout, modes)
    return layout, modes


def _splits_or_skip(batches: list[StepBatch], layout: Layout):
    try:
        return [split_batch(batch, layout) for batch in batches]
    except AggscopeError:  # a token budget a step's rows cannot meet: refused the same either way
        return None


@RUN_SETTINGS
@given(
    batches=runs(), layout=run_layouts(), modes=st.sampled_from([STACKING_MODES, ["token_mean"], ["prompt_mean", "token_sum"]])
)
def test_weigh_steps_is_weigh_modes_bit_for_bit(batches, layout, modes):
    layout, modes = _usable(batches, layout, modes)
    if layout.max_seq_len is not None:
        modes = [*modes, "seq_mean_token_sum_norm"]
    resolved = resolve_modes(modes)
    splits = _splits_or_skip(batches, layout)
    if splits is None:
        return
    together = weigh_steps(batches, resolved, layout, splits)
    for batch, split, got in zip(batches, splits, together, strict=True):
        want = weigh_modes(batch, resolved, layout, split)
        assert list(got) == list(want)
        for name in want:
            assert _bits(got[name].row_weight) == _bits(want[name].row_weight), name
            assert got[name].split is split and got[name].batch is batch


@RUN_SETTINGS
@given(
    batches=runs(),
    layout=run_layouts(),
    modes=st.sampled_from([ALL_MODES, ["token_mean"], ["token_mean", "prompt_mean"], ["token_mean_legacy", "sequence_mean"]]),
    trainer=st.sampled_from([None, "skyrl", "verl"]),
    cap=st.sampled_from([None, 3]),
)
def test_check_steps_is_check_step_of_each_step(batches, layout, modes, trainer, cap):
    layout, modes = _usable(batches, layout, modes)
    if _splits_or_skip(batches, layout) is None:
        return
    options = CheckOptions(response_cap=cap, trainer=trainer)
    together = check_steps(batches, modes, layout, options=options)
    assert len(together) == len(batches)
    for batch, got in zip(batches, together, strict=True):
        assert_same_check(got, check_step(batch, modes, layout, options=options))
    # handed the weights and splits analyse_steps computed (the report's breakdown), the same again
    analyses = analyse_steps(batches, resolve_modes(modes), layout)
    given_weights = check_steps(
        batches,
        modes,
        layout,
        [analysis.split for analysis in analyses],
        options,
        [{name: result.row_weight for name, result in analysis.weights.items()} for analysis in analyses],
    )
    for got, want in zip(given_weights, together, strict=True):
        assert_same_check(got, want)


def test_steps_that_cannot_stack_are_checked_one_by_one():
    """uids in one step only, and rewards in one step only: each step still gets its own check."""
    grouped = batch_of(["a", "a", "b", "b"], [2, 1, 3, 1], [0.0, 0.0, 1.0, -1.0], step=0)
    plain = batch_of(None, [1, 2, 0], [1.0, 0.0, 1.0], step=1)
    rewarded = batch_of(["c", "c"], [2, 2], [0.0, 0.0], rewards=[1.0, 1.0], step=2)
    layout = Layout(mini_batch_size=3)
    for run in ([grouped, plain], [grouped, rewarded], [plain, grouped, rewarded]):
        modes = ["token_mean", "sequence_mean"]
        for got, batch in zip(check_steps(run, modes, layout), run, strict=True):
            assert_same_check(got, check_step(batch, modes, layout))
    # with uids in no step, the run stacks and prompt-level findings stay absent
    plain2 = batch_of(None, [3, 1], [0.0, 1.0], step=3)
    checks = check_steps([plain, plain2], ["token_mean"], layout)
    assert all(c.cut_prompts == {level: () for level in c.cut_prompts} and c.group_sizes == {} for c in checks)


def test_stack_ids_are_run_wide_and_slices_give_each_step_back():
    first = batch_of(["a", "a", "b"], [1, 2, 3], step=4)
    second = batch_of(["c", "d", "d", "e"], [2, 2, 1, 1], step=5)
    layout = Layout(mini_batch_size=2, micro_batch_size=1, dp_size=1)
    splits = [split_batch(first, layout), split_batch(second, layout)]
    stack = Stack.of([first, second], splits)
    assert stack.n_steps == 2 and stack.row_bounds.tolist() == [0, 3, 7]
    assert stack.n_groups == 5 and stack.group_bounds is not None and stack.group_bounds.tolist() == [0, 2, 5]
    assert stack.step_of_row.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert stack.group_ids is not None and stack.group_ids.tolist() == [0, 0, 1, 2, 3, 3, 4]
    # step 0 has two mini-batches (rows 0-1, 2), step 1 two more (rows 3-4, 5-6)
    assert stack.split.mini_batch.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert stack.split.n_mini_batches == 4 and stack.mini_batch_bounds.tolist() == [0, 2, 4]
    assert len(set(stack.split.micro_unit.tolist())) == 7  # micro-batches of one row: none shared
    assert stack.split.order.tolist() == [0, 1, 2, 3, 4, 5, 6]
    for index, split in enumerate(splits):
        rows = stack.rows(index)
        assert (stack.split.order[rows] - rows.start).tolist() == split.order.tolist()
        assert (stack.split.mini_batch[rows] - stack.mini_batch_bounds[index]).tolist() == split.mini_batch.tolist()
    assert stack.per_step(np.array([1, 1, 1, 2, 2, 2, 2])).tolist() == [3, 8]
    assert stack.stats.loss_tokens.tolist() == [1, 2, 3, 2, 2, 1, 1]


def test_a_mode_that_reads_the_whole_step_is_weighed_step_by_step(monkeypatch: pytest.MonkeyPatch):
    """A registered mode without ``stacks=True`` (the default) sees one step's rows, never the run's."""
    monkeypatch.setattr(modes_module, "MODES", dict(modes_module.MODES))
    monkeypatch.setattr(modes_module, "_ALIASES", dict(modes_module._ALIASES))

    @register("one_over_step_rows", "1 / N_s")
    def one_over_step_rows(inputs):
        return np.full_like(inputs.loss_tokens, 1.0 / inputs.loss_tokens.size)

    first, second = batch_of(["a", "a"], [1, 1]), batch_of(["b", "b", "c"], [1, 1, 1], step=1)
    layout = Layout()
    resolved = resolve_modes(["one_over_step_rows", "token_mean", "token_mean_generation"])
    splits = [split_batch(first, layout), split_batch(second, layout)]
    weights = weigh_steps([first, second], resolved, layout, splits)
    assert weights[0]["one_over_step_rows"].row_weight.tolist() == [0.5, 0.5]
    assert weights[1]["one_over_step_rows"].row_weight.tolist() == pytest.approx([1 / 3] * 3)
    assert weights[1]["token_mean_generation"].row_weight.tolist() == pytest.approx([1 / 3] * 3)
    for index, batch in enumerate((first, second)):
        want = analyse_step(batch, resolved, layout)
        for name, result in want.weights.items():
            assert _bits(weights[index][name].row_weight) == _bits(result.row_weight)
