"""The slime ``.pt`` rollout dumps reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dumps import cli_error, per_row, read_all, slime_sample
from test_advantages import loop_advantages

from aggscope.io.open import open_rollouts


def test_slime_rollout_dump(tmp_path: Path) -> None:
    samples = [
        slime_sample(0, 3, 1.0, [1, 0, 1]),
        slime_sample(0, 2, 0.0),
        slime_sample(1, 2, 1.0, removed=True),  # removed: stays a row with no loss token
        slime_sample(1, 1, 0.0, [1]),
    ]
    torch.save({"rollout_id": 7, "samples": samples}, tmp_path / "7.pt")
    torch.save({"rollout_id": 7, "samples": samples[:1]}, tmp_path / "eval_7.pt")  # evaluation rollouts: skipped
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.format == "slime" and rollouts.steps == [7]
    (batch,) = list(rollouts.iter_steps())
    got = per_row(batch)
    want = loop_advantages([1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1], "grpo")
    assert [m for _, m, _ in got] == [[True, False, True], [True, True], [False, False], [True]]
    assert got[0][2] == [pytest.approx(want[0]), 0.0, pytest.approx(want[0])]
    assert got[3][2] == [pytest.approx(want[3])] and [u for u, _, _ in got] == ["0", "0", "1", "1"]


def test_slime_reward_dict_needs_a_key(tmp_path: Path) -> None:
    torch.save({"rollout_id": 1, "samples": [slime_sample(0, 1, {"acc": 1.0, "len": 0.2})]}, tmp_path / "1.pt")
    assert "the reward is a dict (acc, len); choose a key with --reward-col" in cli_error("inspect", str(tmp_path / "1.pt"))
    (batch,) = read_all(tmp_path / "1.pt", reward_col="len")
    assert batch.rewards is not None and batch.rewards.tolist() == [0.2]


def test_slime_response_longer_than_the_sample_is_refused(tmp_path: Path) -> None:
    """A response_length beyond the sample's tokens was read as that many loss tokens."""
    samples = [slime_sample(0, 2, 1.0), {**slime_sample(0, 30, 0.0), "tokens": [1, 2]}]
    torch.save({"rollout_id": 7, "samples": samples}, tmp_path / "7.pt")
    message = f"{tmp_path / '7.pt'}: sample 1: response_length is 30 but the sample holds 2 tokens"
    assert cli_error("inspect", str(tmp_path / "7.pt")) == f"aggscope: error: {message}"


def test_a_plain_pickle_read_as_slime_is_one_line_without_torchs_warning(tmp_path: Path) -> None:
    """torch.load warns about the pickle protocol of such a file: that warning is not printed."""
    (tmp_path / "7.pt").write_bytes(pickle.dumps({"rollout_id": 7, "samples": [1]}, protocol=4))
    done = subprocess.run([sys.executable, "-m", "aggscope", "inspect", str(tmp_path / "7.pt")], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"aggscope: error: {tmp_path / '7.pt'}: cannot load with torch.load")


def test_two_files_naming_one_step_are_read_as_one_step_and_said(tmp_path: Path) -> None:
    for name in ("7.pt", "007.pt"):
        torch.save({"rollout_id": 7, "samples": [slime_sample(0, 2, 1.0)]}, tmp_path / name)
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.steps == [7] and next(rollouts.iter_steps()).n_sequences == 2
    assert "step 7 is read from 2 files whose names give that step (007.pt, 7.pt): their rows are one step" in rollouts.notes
