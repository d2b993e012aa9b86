"""``aggscope.trainer.trl`` without TRL: the mixin on a stand-in trainer, uids, steps, the missing-TRL line.

The real ``GRPOTrainer`` is exercised in ``test_trl_run.py`` (slow, TRL's own Python).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aggscope.core.batch import text_uid
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts
from aggscope.trainer import trl as trl_module
from aggscope.trainer.batch_log import close_batch_logs


def micro_batch() -> dict[str, Any]:
    """Two rows, left-padded prompts (0 = padding), right-padded completions."""
    return {
        "prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
        "completion_ids": torch.tensor([[1, 2, 0], [3, 4, 5]]),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),  # row 0: 1 token then EOS, then padding
        "advantages": torch.tensor([0.5, -0.5]),
    }


def test_prompt_uids_cut_the_padding() -> None:
    inputs = micro_batch()
    assert trl_module.prompt_uids(inputs["prompt_ids"], inputs["prompt_mask"]) == [text_uid("5 6"), text_uid("7 8 9")]


class StandInTrainer:
    """What the mixin reads of ``GRPOTrainer``: ``_prepare_inputs``, ``model``, ``args``, ``accelerator``, ``state``."""

    def __init__(self, output_dir: Path, batches: list[dict[str, Any]]) -> None:
        self.batches = batches
        self.model = types.SimpleNamespace(training=True)
        self.args = types.SimpleNamespace(output_dir=str(output_dir), to_json_string=lambda: json.dumps({"loss_type": "grpo"}))
        self.accelerator = types.SimpleNamespace(is_main_process=True, process_index=0, num_processes=1)
        self.state = types.SimpleNamespace(global_step=0)

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        return self.batches.pop(0)

    def train(self) -> None:
        for step in range(2):
            self.state.global_step = step
            for _ in range(2):  # gradient_accumulation_steps micro-batches
                self._prepare_inputs(None)


class Logged(trl_module.AggscopeGRPOMixin, StandInTrainer):
    pass


def test_mixin_logs_each_micro_batch_under_trls_step_number(tmp_path: Path) -> None:
    batches = [micro_batch() for _ in range(4)]
    batches[3]["tool_mask"] = torch.tensor([[1, 1, 1], [1, 0, 1]])  # the tool output of row 1 is not trained
    trainer = Logged(tmp_path, batches)
    trainer.train()
    close_batch_logs()
    folder = tmp_path / "aggscope_batches"
    assert json.loads((folder / "grpo_config.json").read_text()) == {"loss_type": "grpo"}
    rollouts = open_rollouts(str(folder))
    assert rollouts.steps == [1, 2]  # TRL's numbering: global_step + 1 while the step runs
    first, second = rollouts.iter_steps()
    assert first.offsets.tolist() == [0, 3, 6, 9, 12]  # 2 micro-batches x 2 rows, padded width 3
    assert first.loss_mask.tolist() == [True, True, False, True, True, True] * 2
    assert np.asarray(first.advantages).tolist() == [0.5, 0.5, 0.0, -0.5, -0.5, -0.5] * 2
    assert second.loss_mask.tolist()[6:] == [True, True, False, True, False, True]
    assert list(first.row_uids()) == [text_uid("5 6"), text_uid("7 8 9")] * 2


def test_mixin_logs_nothing_in_evaluation(tmp_path: Path) -> None:
    trainer = Logged(tmp_path, [micro_batch()])
    trainer.model.training = False
    trainer._prepare_inputs(None)
    assert not (tmp_path / "aggscope_batches").exists()


def test_grpo_trainer_class_without_trl_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trl_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AggscopeError, match=r"^aggscope.trainer.trl needs TRL, which is not installed here: pip install trl$"):
        trl_module.grpo_trainer_class()


def test_local_rewards_are_trls_weighted_nansum_of_this_process_slice() -> None:
    nan = float("nan")
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(num_processes=2, process_index=1),
        reward_func_names=["correct", "format"],
        reward_weights=torch.tensor([1.0, 0.5]),
        # an earlier generation's 2 values first, then this one's 4 (2 per process), gathered in process order
        _logs={"rewards": {"correct": [9.0, 9.0, 1.0, 0.0, 1.0, nan], "format": [9.0, 9.0, 1.0, 1.0, nan, nan]}},
    )
    rewards = trl_module.local_rewards(trainer, n_local=2).tolist()
    # process 1's rows: 1 + 0.5 * NaN -> nansum 1; NaN and NaN -> unscorable, NaN
    assert rewards[0] == 1.0 and np.isnan(rewards[1])
