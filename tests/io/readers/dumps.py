"""The fixtures of the reader tests: small dumps of every format written from their documented fields.

Expected values are worked out in the tests themselves, per row, from the fixture's own lists
(plain Python), never from the reader's code: lengths, loss masks, per-token advantages, uids.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.core.batch import StepBatch
from aggscope.io.open import open_rollouts

runner = CliRunner()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_all(path: Path, **options: Any) -> list[StepBatch]:
    return list(open_rollouts(str(path), **options).iter_steps())


def per_row(batch: StepBatch) -> list[tuple[str | None, list[bool], list[float]]]:
    offsets = batch.offsets.tolist()
    uids = batch.row_uids()
    mask, adv = batch.loss_mask.tolist(), batch.advantages.tolist()
    return [(uids[i], mask[offsets[i] : offsets[i + 1]], adv[offsets[i] : offsets[i + 1]]) for i in range(batch.n_sequences)]


def cli_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), result.stderr
    return lines[0]


def estimate(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


VERL_ROWS = [  # balance_batch order: the samples of a prompt are not contiguous
    {"input": "Q1", "output": "abcdefgh", "score": 1.0, "step": 5, "acc": True},
    {"input": "Q2", "output": "abc", "score": 0.0, "step": 5, "acc": False},
    {"input": "Q1", "output": "", "score": 0.0, "step": 5, "acc": False},
    {"input": "Q2", "output": "ééééé", "score": 1.0, "step": 5, "acc": True},
    {"input": "Q1", "output": "x" * 9, "score": 0.0, "step": 5, "acc": False},
    {"input": "Q3", "output": "y", "score": 0.5, "step": 5, "acc": True},
]


def trl_table(step: int, advantage: bool = True, completion: str = "abcd") -> pa.Table:
    columns: dict[str, Any] = {
        "step": [step] * 4,
        "prompt": ["P1", "P1", "P2", "P2"],
        "completion": [completion, "abcdefgh", "", "xyz"],
        "accuracy_reward": [1.0, 0.0, float("nan"), 1.0],
        "format_reward": [0.5, 0.5, 0.0, 0.25],
        "solution": ["1", "1", "2", "2"],
    }
    if advantage:
        columns["advantage"] = [0.7, -0.7, -0.1, 0.1]
    return pa.table(columns)


def nemo_record(prompt: list[int], response: list[int], adv: float, reward: float, keep: float = 1.0, width: int = 8) -> dict:
    tokens = prompt + response
    pad = width - len(tokens)
    mask = [0] * len(prompt) + [1] * len(response)
    return {
        "content": ["..."],
        "rewards": reward,
        "input_lengths": len(tokens),
        "token_ids": tokens + [0] * pad,
        "token_loss_mask": mask + [0] * pad,
        "sample_loss_mask": keep,
        "advantages": [adv] * width,  # NeMo-RL broadcasts over padding too: must be cut off
    }


def slime_sample(group: int, length: int, reward: Any, mask: list[int] | None = None, removed: bool = False) -> dict:
    return {"group_index": group, "index": 0, "prompt": "p", "tokens": [9] * (4 + length), "response": "r",
            "response_length": length, "label": None, "reward": reward, "loss_mask": mask, "status": "completed",
            "remove_sample": removed, "metadata": {}}  # fmt: skip


class StandInTrainingInputBatch(dict):
    """The pickled shape of SkyRL's TrainingInputBatch: a dict of tensors, a metadata dict, and a
    __getstate__ that stores each tensor as torch.save bytes."""

    metadata: dict | None = None

    def __getstate__(self) -> dict:
        blobs = {}
        for key, value in self.items():
            buffer = __import__("io").BytesIO()
            torch.save(value, buffer)
            blobs[key] = buffer.getvalue()
        return {
            "batch_dict": blobs,
            "batch_size": len(next(iter(self.values()))),
            "device": torch.device("cpu"),
            "metadata": self.metadata,
        }

    def __setstate__(self, state: dict) -> None:
        for key, blob in state["batch_dict"].items():
            self[key] = torch.load(__import__("io").BytesIO(blob))
        self.metadata = state["metadata"]


@pytest.fixture
def stand_in_skyrl(monkeypatch: pytest.MonkeyPatch) -> type:
    package, module = types.ModuleType("skyrl_train"), types.ModuleType("skyrl_train.training_batch")
    StandInTrainingInputBatch.__module__ = "skyrl_train.training_batch"
    StandInTrainingInputBatch.__qualname__ = "TrainingInputBatch"
    module.TrainingInputBatch = StandInTrainingInputBatch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skyrl_train", package)
    monkeypatch.setitem(sys.modules, "skyrl_train.training_batch", module)
    return StandInTrainingInputBatch


def skyrl_dump(path: Path, cls: type, metadata: dict) -> Path:
    batch = cls(
        {
            "loss_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]),  # left-padded
            "advantages": torch.tensor([[0.0, 0.0, 1.5, 1.5], [0.0, -1.0, -1.0, -1.0], [9.0, 0.0, 0.0, 2.0], [0.5] * 4]),
            "rewards": torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]),
        }
    )
    batch.metadata = metadata
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return path
