"""The verl and SkyRL hooks: the batch logged as trained reads back as the frameworks' own data says.

SkyRL: a ``TrainingInputBatch`` of SkyRL 0.4.0's own class (the committed trainer dump, unpickled
with SkyRL's ``training_batch.py`` from the wheel), logged after its padding row is appended. verl:
a hand-built equivalent of a ``DataProto`` (verl's needs ``tensordict``): ``.batch`` tensors and
``.non_tensor_batch`` arrays under verl 0.9.1's names.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from aggscope.core.layout import Layout
from aggscope.core.modes import resolve_mode
from aggscope.core.weights import compute_weights
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts
from aggscope.trainer.batch_log import flush_batch_logs
from aggscope.trainer.skyrl_hook import AggscopeSkyrlLogging, log_skyrl_batch
from aggscope.trainer.verl_hook import log_verl_batch

SKYRL_DUMP = Path(__file__).parent.parent / "io" / "skyrl_dumps" / "skyrl-0.4.0-trainer-step3.pkl"


def skyrl_batch(with_uids: bool) -> object:
    from framework_wheels import skyrl_training_batch

    with skyrl_training_batch():
        batch = pickle.loads(SKYRL_DUMP.read_bytes())
    if with_uids:  # as compute_advantages_and_returns leaves it, before the trainer drops them (pad rows: pad0)
        batch.metadata["uids"] = ["q0", "q0", "q1", "q1", "q2", "q2", "q3", "q3", "pad0"]
    return batch


def grads(folder_or_file: Path, layout: Layout, mode: str) -> np.ndarray:
    (batch,) = list(open_rollouts(str(folder_or_file)).iter_steps())
    weights = compute_weights(batch, resolve_mode(mode), layout).token_weights(np.float64)
    return weights * np.where(batch.loss_mask, batch.advantages, 0.0)


@pytest.mark.parametrize("with_uids", [True, False])
def test_skyrl_hook_logs_what_the_dump_reader_reads(tmp_path: Path, with_uids: bool) -> None:
    log_skyrl_batch(tmp_path / "logged", skyrl_batch(with_uids), step=3)
    flush_batch_logs()
    (logged,) = list(open_rollouts(str(tmp_path / "logged")).iter_steps())
    assert logged.n_sequences == 8 and logged.step == 3  # the padding row is not logged
    assert logged.row_uids() == (
        ["q0", "q0", "q1", "q1", "q2", "q2", "q3", "q3"] if with_uids else [f"p{k // 2}" for k in range(8)]
    )
    dump = tmp_path / "dumped_data" / "global_step_3_training_input.pkl"
    dump.parent.mkdir()
    dump.write_bytes(SKYRL_DUMP.read_bytes())
    layout = Layout(mini_batch_prompts=2, micro_batch_size=2)
    for mode in ("token_mean", "token_mean_legacy", "sequence_mean", "prompt_mean"):
        np.testing.assert_allclose(grads(tmp_path / "logged", layout, mode), grads(dump.parent, layout, mode), rtol=1e-12)


def test_skyrl_mixin_logs_every_step_after_the_advantages(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    class Trainer:  # SkyRL's RayPPOTrainer as the mixin sees it
        cfg = OmegaConf.create({"trainer": {"export_path": str(tmp_path), "policy_mini_batch_size": 2}})
        global_step = 5

        def compute_advantages_and_returns(self, data: object) -> object:
            return data

    class Logged(AggscopeSkyrlLogging, Trainer):
        pass

    batch = skyrl_batch(with_uids=True)
    assert Logged().compute_advantages_and_returns(batch) is batch
    flush_batch_logs()
    rollouts = open_rollouts(str(tmp_path / "aggscope_batches"))
    assert rollouts.steps == [5] and rollouts.unrecoverable == ()
    written = OmegaConf.load(tmp_path / "aggscope_batches" / "skyrl_config.yaml")  # the trainer's cfg, for the commands
    assert OmegaConf.to_container(written) == OmegaConf.to_container(Trainer.cfg)


def verl_data(advantage_key: str = "advantages") -> types.SimpleNamespace:
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    scores = torch.zeros(4, 4)
    scores[torch.arange(4), response_mask.sum(dim=1) - 1] = torch.tensor([1.0, 0.0, 0.5, 0.5])
    row_advantage = torch.tensor([0.7071, -0.7071, 0.0, 0.0])
    return types.SimpleNamespace(
        batch={
            advantage_key: row_advantage[:, None] * response_mask,
            "response_mask": response_mask,
            "token_level_scores": scores,
        },
        non_tensor_batch={"uid": np.array(["a", "a", "b", "b"], dtype=object)},
    )


def test_verl_hook_logs_the_dataproto_fields(tmp_path: Path) -> None:
    data = verl_data()
    log_verl_batch(tmp_path / "logged", data, step=2)
    flush_batch_logs()
    (batch,) = list(open_rollouts(str(tmp_path / "logged")).iter_steps())
    mask = data.batch["response_mask"].bool()
    assert batch.row_uids() == ["a", "a", "b", "b"] and batch.rewards is not None
    assert batch.rewards.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert batch.loss_mask.tolist() == mask.reshape(-1).tolist()
    np.testing.assert_array_equal(batch.advantages, data.batch["advantages"].reshape(-1).numpy())


def test_verl_hook_before_the_advantages_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AggscopeError, match=r"^log_verl_batch: the batch has no 'advantages'; call it after compute_advantage$"):
        log_verl_batch(tmp_path / "logged", verl_data("values"), step=2)
    with pytest.raises(AggscopeError, match=r"expected a verl DataProto \(.batch and .non_tensor_batch\), got dict"):
        log_verl_batch(tmp_path / "logged", {}, step=2)
