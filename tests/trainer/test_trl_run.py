"""A real TRL 1.16 ``GRPOTrainer`` run: aggscope's weights equal the gradients TRL's autograd delivered.

``trl_grpo_run.py`` trains a tiny random Llama on CPU in ``$AGGSCOPE_TRL_PYTHON`` (TRL is not in
aggscope's environment; ``.ci/run`` builds that Python) for every loss type below, with
``log_completions=True`` and ``aggscope.trainer.trl.AggscopeGRPOMixin`` logging, and captures
``d loss / d per_token_logps`` on the tensor TRL's loss is computed from. At ratio 1 that gradient
is ``-w * A`` (divided by the number of processes by DDP's mean), so:

- with one process and with two (``torchrun``, DDP on gloo), from the mixin's log and its ``grpo_config.json``, aggscope's per-token ``w * A`` equals the
  captured gradient on every token, for every loss type;
- from TRL's own completions files (chat messages for ``dapo``, text for the others), read with ``--tokenizer`` and ``--max-completion-length``
  (steps_per_generation = gradient_accumulation_steps), every completion's token count, advantage
  and reward equal what was trained, and the step sums of ``grpo``, ``dapo`` and ``dr_grpo`` equal the
  exact ones; ``bnpo``'s micro-batches, cut after TRL's shuffle, are what the reader's
  ``unrecoverable`` list names, and the only number allowed to differ.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from trl_env import trl_python

from aggscope.core.batch import StepBatch
from aggscope.core.weights import compute_weights
from aggscope.io.open import open_rollouts
from aggscope.presets import load_setup
from aggscope.presets.apply import apply_setup

pytestmark = pytest.mark.slow  # end to end: TRL trains in its own Python

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "tests" / "trl_grpo_run.py"
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
SPEC = {
    "B": 4,
    "GA": 2,
    "SPG": 2,
    "G": 4,
    "steps": 2,
    "max_completion_length": 8,
    "conversational": ["dapo"],
    "variants": {"grpo_spg4": {"loss_type": "grpo", "SPG": 4}},  # one generation feeds both optimizer steps
}
EXACT_FROM_DUMP = ["grpo", "dr_grpo", "dapo"]  # step sums that do not depend on the micro-batch order


@pytest.fixture(scope="module", params=[1, 2], ids=["1 process", "2 processes"])
def trl_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's folder: one process, or two under ``torchrun`` (DDP on gloo, CPU)."""
    python = Path(trl_python("the real TRL run"))
    out = tmp_path_factory.mktemp(f"trl-run-{request.param}")
    spec = json.dumps({**SPEC, "out": str(out), "loss_types": LOSS_TYPES})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "AGGSCOPE_TRL_SPEC": spec}
    command = [str(python), str(RUN)]
    if request.param > 1:
        command = [str(python.parent / "torchrun"), "--standalone", f"--nproc-per-node={request.param}", str(RUN)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def applied_setup(folder: Path):  # type: ignore[no-untyped-def]
    """The TRL setup from the config the mixin wrote, read as the commands read it from the log folder
    (``logged``: the micro-batches in the order the mixin logged them, no flag)."""
    return apply_setup(load_setup([str(folder / "batches" / "grpo_config.json")], trainer="trl", logged=True), {})


def step_gradient(batch: StepBatch, applied) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``[n_tokens]`` ``w * A``: aggscope's per-token gradient weight times the advantage."""
    weights = compute_weights(batch, applied.setup.mode, applied.layout).token_weights(torch.float64)
    return np.asarray(weights, dtype=np.float64) * np.asarray(batch.advantages, dtype=np.float64)


def captured_by_step(folder: Path) -> dict[int, np.ndarray]:
    """Each step's captured ``d loss / d logp``, flat row by row, rank by rank, micro-batch by micro-batch."""
    by_step: dict[int, list[np.ndarray]] = {}
    for path in sorted(folder.glob("captured_rank*.json")):
        for micro_batch in json.loads(path.read_text()):
            by_step.setdefault(micro_batch["step"], []).append(np.asarray(micro_batch["grad"], dtype=np.float64).reshape(-1))
    return {step: np.concatenate(parts) for step, parts in by_step.items()}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_logged_batches_give_the_gradient_trl_trained_with(trl_run: Path, loss_type: str) -> None:
    folder = trl_run / loss_type
    applied = applied_setup(folder)
    logged = open_rollouts(str(folder / "batches"))
    captured = captured_by_step(folder)
    assert logged.steps == sorted(captured) == [1, 2]
    for batch in logged.iter_steps():
        want = -captured[batch.step] / applied.layout.dp_size  # DDP averages the processes' gradients
        got = step_gradient(batch, applied)
        assert got.shape == want.shape
        assert np.count_nonzero(want) > 0
        assert relative_error(got, want) <= 1e-6, (loss_type, batch.step)


def dump_batches(folder: Path) -> tuple[dict, list[StepBatch]]:
    """What aggscope read from TRL's completions files (in TRL's Python), as batches."""
    document = json.loads((folder / "dump_read.json").read_text())
    batches = []
    for step in document["steps"]:
        lengths = np.asarray(step["lengths"], dtype=np.int64)
        advantages = np.repeat(np.asarray(step["advantages"], dtype=np.float64), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        rewards = np.asarray([np.nan if r is None else r for r in step["rewards"]], dtype=np.float64)
        mask = np.ones(int(offsets[-1]), dtype=bool)
        batches.append(StepBatch.from_flat(advantages, mask, offsets, rewards=rewards, step=step["step"]))
    return document, batches


def rows_of(batch: StepBatch) -> list[tuple[float, int, str]]:
    """``(advantage, loss tokens, reward)`` per completion, sorted: the rows whatever order they were cut in."""
    mask = np.asarray(batch.loss_mask, dtype=np.int64)
    loss_tokens = np.add.reduceat(mask, batch.offsets[:-1]) if mask.size else np.zeros(0, dtype=np.int64)
    first = np.asarray(batch.advantages, dtype=np.float64)
    advantages = [
        float(first[start:end][mask[start:end] > 0][0]) if n else 0.0
        for start, end, n in zip(batch.offsets[:-1], batch.offsets[1:], loss_tokens, strict=True)
    ]
    assert batch.rewards is not None
    rewards = [f"{r:.6g}" for r in np.asarray(batch.rewards, dtype=np.float64).tolist()]  # NaN as "nan": comparable
    return sorted((round(a, 5), int(n), r) for a, n, r in zip(advantages, loss_tokens, rewards, strict=True))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_completions_dump_loses_only_what_it_says(trl_run: Path, loss_type: str) -> None:
    folder = trl_run / loss_type
    document, dump = dump_batches(folder)
    logged = {batch.step: batch for batch in open_rollouts(str(folder / "batches")).iter_steps()}
    applied = applied_setup(folder)
    assert [batch.step for batch in dump] == sorted(logged)
    for batch in dump:
        exact = logged[batch.step]
        assert rows_of(batch) == rows_of(exact), "token counts, advantages or rewards differ from what TRL trained"
        dumped, trained = step_gradient(batch, applied).sum(), step_gradient(exact, applied).sum()
        if loss_type in EXACT_FROM_DUMP:
            assert dumped == pytest.approx(trained, rel=1e-6, abs=1e-9), (loss_type, batch.step)
    lost = {mode for fact in document["unrecoverable"] for mode in fact["modes"]}
    assert applied.setup.mode in lost or loss_type in EXACT_FROM_DUMP
    assert "token_mean_legacy" in lost


def test_nan_rewards_are_missing_and_their_advantage_zero(trl_run: Path) -> None:
    """Completions starting with ``w5`` get None from the reward function: NaN, advantage 0 in TRL."""
    document, _ = dump_batches(trl_run / "grpo")
    rows = [(r, a) for step in document["steps"] for r, a in zip(step["rewards"], step["advantages"], strict=True)]
    unscorable = [a for r, a in rows if r is None]
    assert unscorable, "the run should have a completion whose reward function returned None"
    assert all(a == 0.0 for a in unscorable)


def test_a_generation_fed_to_two_steps_is_read_once(trl_run: Path) -> None:
    """``steps_per_generation = 2 x gradient_accumulation_steps``: TRL writes the generation into both steps' files."""
    folder = trl_run / "grpo_spg4"
    assert sorted(p.name for p in (folder / "completions").iterdir()) == [
        "completions_00001.parquet",
        "completions_00002.parquet",
    ]
    document, dump = dump_batches(folder)
    assert [batch.step for batch in dump] == [1]
    assert any("step 1 (also 2)" in note for note in document["notes"])
    logged = list(open_rollouts(str(folder / "batches")).iter_steps())
    assert [batch.step for batch in logged] == [1, 2]  # the mixin logs each optimizer step's half
    trained = sorted(row for batch in logged for row in rows_of(batch))
    assert rows_of(dump[0]) == trained  # the generation, read once, is the rows both steps trained
    # Step 1 trains at ratio 1: exact. Step 2 trains the rest of the generation with the policy step 1 made, so
    # its gradient carries the importance ratio, which neither file holds (the reader's unrecoverable list says so).
    applied, captured = applied_setup(folder), captured_by_step(folder)
    processes = applied.layout.dp_size
    assert relative_error(step_gradient(logged[0], applied), -captured[1] / processes) <= 1e-6
    assert relative_error(step_gradient(logged[1], applied), -captured[2] / processes) > 1e-3
    assert any("steps_per_generation > gradient_accumulation_steps" in fact["fact"] for fact in document["unrecoverable"])
