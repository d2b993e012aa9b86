"""The local engine's runs of steps (``runner.in_runs``): the work done on several steps at once gives
every step's own result, in order, and errors come as they would step by step."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from aggscope.analysis import runner
from aggscope.analysis.breakdown import run_breakdown
from aggscope.analysis.specs import Spec
from aggscope.analysis.weights import run_weights
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import resolve_mode
from aggscope.core.weights import select_modes
from aggscope.errors import AggscopeError
from aggscope.present.report import build_report


def _steps(n_steps: int, seed: int = 0) -> list[StepBatch]:
    """Steps of several sizes (so a run mixes sizes), three groups of samples each."""
    rng = np.random.default_rng(seed)
    steps = []
    for step in range(n_steps):
        n_seqs = int(rng.choice([6, 9, 12, 30]))
        lengths = rng.integers(0, 40, n_seqs)
        n_tokens = int(lengths.sum())
        advantages = rng.normal(size=n_tokens)
        advantages[rng.random(n_tokens) < 0.1] = 0.0
        uids = np.repeat(np.arange(3), -(-n_seqs // 3))[:n_seqs]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        steps.append(StepBatch.from_flat(advantages, rng.random(n_tokens) < 0.8, offsets, uids=uids, step=step))
    return steps


def test_runs_give_every_step_its_own_result() -> None:
    steps = _steps(150)
    layout = Layout(mini_batch_size=4, dp_size=2)
    modes = select_modes(None, has_groups=True, layout=layout)
    by_runs = run_weights(runner.Batches(steps), modes, layout).to_dict()
    one_by_one = run_weights(runner.Batches(steps), modes, layout, engine=_StepByStep()).to_dict()
    assert by_runs == one_by_one
    specs = [Spec(resolve_mode(name), layout) for name in ("token_mean", "prompt_mean")]
    breakdown = build_report(run_breakdown(runner.Batches(steps), specs), "report").document
    alone = build_report(run_breakdown(runner.Batches(steps), specs, engine=_StepByStep()), "report").document
    assert breakdown == alone


class _StepByStep(runner.Engine):
    """The local engine without runs: each step's work on its own."""

    def map_steps(self, rollouts, work, work_on_steps=None):  # type: ignore[no-untyped-def]
        return super().map_steps(rollouts, work)


def test_runs_are_bounded_in_steps_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "RUN_STEPS", 5)
    monkeypatch.setattr(runner, "RUN_TOKENS", 200)
    steps = _steps(40)
    sizes: list[int] = []

    def several(batches: list[StepBatch]) -> list[int]:
        sizes.append(len(batches))
        assert len(batches) <= 5 and sum(b.n_tokens for b in batches[:-1]) < 200
        return [b.step for b in batches]

    assert list(runner.in_runs(iter(steps), lambda b: b.step, several)) == list(range(40))
    assert max(sizes) <= 5


def test_a_failing_run_is_done_again_step_by_step() -> None:
    steps = _steps(10)
    done: list[int] = []

    def one(batch: StepBatch) -> int:
        if batch.step == 6:
            raise AggscopeError(f"step {batch.step} is bad")
        return batch.step

    def several(batches: list[StepBatch]) -> list[int]:
        if any(b.step >= 6 for b in batches):
            raise AggscopeError("step 8 is bad")  # a later step's error, found first by the run
        return [b.step for b in batches]

    with pytest.raises(AggscopeError, match="step 6 is bad"):
        for result in runner.in_runs(iter(steps), one, several):
            done.append(result)
    assert done == [0, 1, 2, 3, 4, 5]


def test_a_step_that_cannot_be_read_comes_after_the_steps_before_it() -> None:
    def read() -> Iterator[StepBatch]:
        yield from _steps(3)
        raise AggscopeError("step 3: cannot be read")

    done: list[int] = []
    with pytest.raises(AggscopeError, match="cannot be read"):
        for result in runner.in_runs(read(), lambda b: b.step, lambda bs: [b.step for b in bs]):
            done.append(result)
    assert done == [0, 1, 2]
