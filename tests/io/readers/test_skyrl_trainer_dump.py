"""A dump written by SkyRL 0.4.0's own trainer code (``skyrl_dumps/make_trainer_dump.py``), read without SkyRL.

Its weights are checked against SkyRL's own ``apply_loss_reduction_to_advantages_minibatch`` (loaded
from the wheel), applied as ``RayPPOTrainer._normalize_advantages`` applies it: per recorded
mini-batch, with the prompt boundaries that start inside it, rebased. SkyRL's loss is the masked sum
of the scaled advantages times the per-token loss, so its scaled advantage times the loss mask is
each token's ``w * A``.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dumps import runner

from aggscope.cli import app
from aggscope.core.layout import Layout
from aggscope.core.modes import resolve_mode
from aggscope.core.weights import compute_weights
from aggscope.io.open import open_rollouts
from aggscope.presets.recorded import with_recorded_layout

DUMP = Path(__file__).parent.parent / "skyrl_dumps" / "skyrl-0.4.0-trainer-step3.pkl"
REDUCTIONS = ["token_mean", "token_mean_legacy", "sequence_mean", "seq_mean_token_sum_norm", "prompt_mean"]


@pytest.fixture
def dump_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "dumped_data"
    folder.mkdir()
    (folder / "global_step_3_training_input.pkl").write_bytes(DUMP.read_bytes())
    return folder


def skyrl_scaled(reduction: str, micro: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SkyRL's own scaled advantages of the dump's trained rows, and their loss mask (``[8, 6]``)."""
    from framework_wheels import load_skyrl, skyrl_training_batch

    ppo_utils = load_skyrl().ppo_utils
    with skyrl_training_batch():
        batch = pickle.loads(DUMP.read_bytes())  # SkyRL's own class, to read its fields as SkyRL does
    advantages, loss_mask = batch["advantages"].double(), batch["loss_mask"].double()
    metadata = batch.metadata
    scaled = torch.zeros_like(advantages)
    for start, end in metadata["policy_mini_batch_boundaries"]:
        rebased = [(s - start, e - start) for s, e in metadata["policy_prompt_boundaries"] if start <= s < end]
        scaled[start:end] = ppo_utils.apply_loss_reduction_to_advantages_minibatch(
            advantages[start:end], loss_mask[start:end], reduction, micro, horizon, rebased
        )
    rows = metadata["policy_mini_batch_boundaries"][-1][1]
    return scaled[:rows], loss_mask[:rows]


def test_the_trainer_dump_reads_without_skyrl(dump_dir: Path) -> None:
    assert not any(name == "skyrl" or name.startswith("skyrl.") for name in sys.modules)
    rollouts = open_rollouts(str(dump_dir))
    (batch,) = list(rollouts.iter_steps())
    assert not any(name == "skyrl" or name.startswith("skyrl.") for name in sys.modules)
    # 8 rows of 4 prompts; pad_training_input_batch's ninth row (metadata pad_size 1) is dropped
    assert batch.n_sequences == 8 and batch.row_uids() == ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    assert rollouts.recorded_layout == {"mini_batch_prompts": 2}
    assert any("dropped 1 SkyRL padding rows" in note for note in rollouts.notes)
    # the two tool tokens of row 6 carry an advantage SkyRL never trains (row 2's group has equal scores: 0)
    assert any("2 masked tokens carry a non-zero advantage" in note for note in rollouts.notes)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weights_equal_skyrls_own_loss_reduction(dump_dir: Path, reduction: str) -> None:
    rollouts = open_rollouts(str(dump_dir))
    layout, line = with_recorded_layout(rollouts, Layout(micro_batch_size=2, max_seq_len=6))
    assert layout.mini_batch_prompts == 2 and line is not None and line.startswith("layout from the dump: mini_batch_prompts 2")
    (batch,) = list(rollouts.iter_steps())
    weights = torch.as_tensor(compute_weights(batch, resolve_mode(reduction), layout).token_weights(np.float64))
    got = (weights * torch.as_tensor(batch.advantages, dtype=torch.float64)).view(8, 6)
    scaled, loss_mask = skyrl_scaled(reduction, micro=2, horizon=6)
    torch.testing.assert_close(got, scaled * loss_mask, rtol=1e-6, atol=1e-12)


def test_without_the_recorded_mini_batches_weights_differ(dump_dir: Path) -> None:
    """The recorded layout is what makes them equal: one mini-batch of the whole step is 2x off."""
    (batch,) = list(open_rollouts(str(dump_dir)).iter_steps())
    weights = torch.as_tensor(compute_weights(batch, resolve_mode("token_mean"), Layout()).token_weights(np.float64))
    got = (weights * torch.as_tensor(batch.advantages, dtype=torch.float64)).view(8, 6)
    scaled, loss_mask = skyrl_scaled("token_mean", micro=2, horizon=6)
    assert not torch.allclose(got, scaled * loss_mask)


def test_flags_and_config_override_the_recorded_layout_and_say_so(dump_dir: Path) -> None:
    rollouts = open_rollouts(str(dump_dir))
    layout, line = with_recorded_layout(rollouts, Layout(mini_batch_size=8))
    assert layout.mini_batch_size == 8 and layout.mini_batch_prompts is None
    assert line == "the dump records mini_batch_prompts 2; the flags override it with mini_batch_size 8"
    same, line = with_recorded_layout(rollouts, Layout(mini_batch_prompts=2), set_by="the config")
    assert same.mini_batch_prompts == 2 and line == "the dump records mini_batch_prompts 2, as the config set"


def test_cli_uses_the_recorded_layout_and_lists_what_the_dump_lacks(dump_dir: Path) -> None:
    result = runner.invoke(app, ["weights", str(dump_dir), "-m", "token_mean", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layout"]["mini_batch_prompts"] == 2
    assert doc["config"]["notes"][0].startswith("layout from the dump: mini_batch_prompts 2")
    facts = {u["fact"] for u in doc["unrecoverable"]}
    assert "trainer.algorithm.loss_reduction" in facts and "trainer.update_epochs_per_batch" in facts
    checked = runner.invoke(app, ["check", str(dump_dir), "-m", "token_mean", "--json"])
    assert checked.exit_code == 0, checked.output
    check = json.loads(checked.stdout)
    assert check["unrecoverable"] == doc["unrecoverable"] and check["layout"]["mini_batch_prompts"] == 2
    codes = {f["code"] for f in check["findings"]}
    assert "masked_token_advantage" not in codes  # SkyRL's loss masks them: no advice that does not apply
    assert check["sequences"] == 8


def test_a_bad_pad_size_is_one_line(tmp_path: Path) -> None:
    from framework_wheels import skyrl_training_batch

    with skyrl_training_batch():
        batch = pickle.loads(DUMP.read_bytes())
        batch.metadata["pad_size"] = 12
        path = tmp_path / "bad" / "global_step_3_training_input.pkl"
        path.parent.mkdir()
        path.write_bytes(pickle.dumps(batch))
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"aggscope: error: {path}: metadata['pad_size'] is 12; expected a whole number from 0 to 9"


def test_the_text_output_says_where_the_mini_batches_came_from(dump_dir: Path) -> None:
    shown = runner.invoke(app, ["weights", str(dump_dir), "-m", "token_mean"])
    assert shown.exit_code == 0, shown.output
    assert "config: layout from the dump: mini_batch_prompts 2" in shown.stdout
    config = [
        f"--set={key}"
        for key in ("trainer.train_batch_size=4", "trainer.policy_mini_batch_size=4", "generator.n_samples_per_prompt=2")
    ]
    overridden = runner.invoke(app, ["weights", str(dump_dir), "-m", "token_mean", "--trainer", "skyrl", *config])
    assert overridden.exit_code == 0, overridden.output
    assert "the dump records mini_batch_prompts 2; the config overrides it with mini_batch_prompts 4" in overridden.stdout


def test_a_nan_advantage_on_a_masked_token_is_kept(tmp_path: Path) -> None:
    """NaN x 0 is NaN in SkyRL's loss (reduce_loss): only finite masked advantages are read as 0."""
    from framework_wheels import skyrl_training_batch

    with skyrl_training_batch():
        batch = pickle.loads(DUMP.read_bytes())
        batch["advantages"][6, 1] = float("nan")  # a tool token of row 6 (loss_mask 0)
        path = tmp_path / "nan" / "global_step_3_training_input.pkl"
        path.parent.mkdir()
        path.write_bytes(pickle.dumps(batch))
    rollouts = open_rollouts(str(path))
    (step,) = list(rollouts.iter_steps())
    assert np.isnan(step.advantages[6 * 6 + 1]) and step.advantages[6 * 6 + 2] == 0.0
    assert any("1 masked tokens carry a non-zero advantage" in note for note in rollouts.notes)
