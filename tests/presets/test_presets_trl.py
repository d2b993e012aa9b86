"""The TRL preset against TRL's own ``GRPOTrainer._compute_loss``, every loss type of TRL 1.16.0,
with one or several optimizer steps per generation batch (``steps_per_generation`` a multiple of
``gradient_accumulation_steps``) and ``num_iterations`` 1 or 2 (weights summed over the passes).

TRL needs transformers, accelerate and datasets, which aggscope's environment does not carry, so
the loss runs in a Python that has them: ``$AGGSCOPE_TRL_PYTHON`` (``.ci/run`` builds one with
``trl==1.16.0``), through ``trl_loss_probe.py``. Without it the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from trl_env import trl_python

from aggscope.core.batch import StepBatch
from aggscope.core.weights import compute_weights
from aggscope.presets import load_setup
from aggscope.presets.apply import apply_setup

pytestmark = pytest.mark.slow  # end to end: TRL in its own Python

PROBE = Path(__file__).resolve().parents[1] / "trl_loss_probe.py"
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]


def specs() -> list[dict]:
    rng = random.Random(12)
    out = []
    for loss_type in LOSS_TYPES:
        # SPG = GA (one optimizer step per generation batch), then SPG = 2 or 3 x GA, and num_iterations 2
        for generations_per_step, iterations in [(1, 1)] * 4 + [(2, 1), (3, 1), (2, 2), (1, 2)]:
            processes, per_device, accumulation = rng.choice([1, 2]), rng.choice([2, 4]), rng.choice([1, 2, 3])
            spg = accumulation * generations_per_step
            rows = processes * per_device * spg  # one generation batch
            lengths = [rng.randint(1, 8) for _ in range(rows)]
            masks = [[int(rng.random() < 0.85) for _ in range(n)] for n in lengths]
            out.append(
                {"lengths": lengths, "masks": masks, "P": processes, "B": per_device, "GA": accumulation, "SPG": spg}
                | {"loss_type": loss_type, "max_completion_length": 8, "iterations": iterations}
            )
    return out


def aggscope_weights(spec: dict) -> list[list[float]]:
    sets = [
        f"per_device_train_batch_size={spec['B']}",
        f"gradient_accumulation_steps={spec['GA']}",
        f"+num_processes={spec['P']}",
        "num_generations=2",
        f"loss_type={spec['loss_type']}",
        f"max_completion_length={spec['max_completion_length']}",
        f"steps_per_generation={spec['SPG']}",
        f"num_iterations={spec['iterations']}",
    ]
    # TRL's micro-batches come from a shuffle the probe leaves out, so the test gives the order
    applied = apply_setup(load_setup([], trainer="trl", sets=sets), {"order": "logged"})
    flat = torch.tensor([bit for m in spec["masks"] for bit in m], dtype=torch.float64)
    batch = StepBatch.from_flat(torch.ones_like(flat), flat, np.cumsum([0, *spec["lengths"]]))
    weights = compute_weights(batch, applied.setup.mode, applied.layout).token_weights(torch.float64)
    return [w.tolist() for w in torch.split(weights, spec["lengths"])]


def test_trl_config_weights_equal_trl_compute_loss() -> None:
    python = trl_python("the TRL test")
    cases = specs()
    done = subprocess.run(
        [python, str(PROBE)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for spec, expected in zip(cases, json.loads(done.stdout), strict=True):
        got = aggscope_weights(spec)
        for row, (want, have) in enumerate(zip(expected, got, strict=True)):
            assert have == pytest.approx(want, rel=1e-6, abs=1e-12), (
                spec["loss_type"],
                spec["P"],
                spec["B"],
                spec["GA"],
                spec["SPG"],
                spec["iterations"],
                row,
            )
