"""The hooks write the trainer's config into the log folder, and every command uses it as ``--config``.

verl: a ``DataProto`` (hand-built under verl 0.9.1's names, in ``balance_batch``'s order: groups not
contiguous) and verl's own full config (the wheel's ``_generated_ppo_trainer.yaml`` as the
``DictConfig`` the trainer holds, a few keys set); ``aggscope weights FOLDER`` with no flag gives
the weights verl 0.9.1's ``agg_loss`` gives in its own micro-batch loop under that config
(``trainer_losses.verl_weights``). SkyRL: the same against SkyRL 0.4.0's own loss reduction
(``trainer_losses.skyrl_weights``). TRL: ``test_trl_config_file_gives_the_layout_of_the_grpo_config``
(slow: a real ``GRPOConfig`` in TRL's Python).
"""

from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from framework_wheels import unpacked_wheel
from trainer_losses import skyrl_weights, verl_weights
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.errors import AggscopeError
from aggscope.trainer.batch_log import flush_batch_logs
from aggscope.trainer.config_file import config_yaml
from aggscope.trainer.skyrl_hook import log_skyrl_batch
from aggscope.trainer.trl import write_config
from aggscope.trainer.verl_hook import log_verl_batch

runner = CliRunner()
ROWS, WIDTH = 8, 5
A = "actor_rollout_ref.actor."


def response_masks(seed: int) -> torch.Tensor:
    """``[8, 5]`` right-padded masks, each row at least one token, some holes (multi-turn)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, WIDTH + 1, (ROWS,), generator=generator)
    mask = (torch.arange(WIDTH)[None, :] < lengths[:, None]).long()
    holes = torch.rand(ROWS, WIDTH, generator=generator) < 0.2
    mask[holes & (torch.arange(WIDTH)[None, :] > 0)] = 0
    return mask


def weights_from_folder(folder: Path, tmp_path: Path, *flags: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``aggscope weights FOLDER [flags] --json -o``: the JSON and each mode's ``[8, 5]`` weights."""
    out = tmp_path / "weights.parquet"
    result = runner.invoke(app, ["weights", str(folder), *flags, "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    weights = {
        name.removeprefix("weight_"): np.asarray(table.column(name).to_pylist(), dtype=np.float64)
        for name in table.column_names
        if name.startswith("weight_")
    }
    return json.loads(result.stdout), weights


def verl_config(agg: str, scale: int | None, epochs: int) -> object:
    from omegaconf import OmegaConf

    config = OmegaConf.load(unpacked_wheel("verl") / "verl" / "trainer" / "config" / "_generated_ppo_trainer.yaml")
    values = {
        "data.train_batch_size": 4,
        "actor_rollout_ref.rollout.n": 2,
        A + "ppo_mini_batch_size": 2,
        A + "ppo_micro_batch_size_per_gpu": 1,
        A + "loss_agg_mode": agg,
        A + "loss_scale_factor": scale,
        A + "ppo_epochs": epochs,
        "trainer.n_gpus_per_node": 2,
        "trainer.nnodes": 1,
    }
    for key, value in values.items():
        OmegaConf.update(config, key, value)
    return config


@pytest.mark.parametrize(
    ("agg", "scale", "epochs"),
    [
        ("token-mean", None, 1),
        ("token-mean", None, 2),
        ("token-sum", None, 1),
        ("seq-mean-token-mean", None, 1),
        ("seq-mean-token-sum", None, 1),
        ("seq-mean-token-sum-norm", 7, 1),
        ("seq-mean-token-sum-norm", None, 1),
    ],
)
def test_verl_folder_weights_equal_verl_agg_loss_under_the_logged_config(
    tmp_path: Path, agg: str, scale: int | None, epochs: int
) -> None:
    mask = response_masks(seed=len(agg) + epochs)
    advantages = torch.linspace(-1, 1, ROWS)[:, None] * mask  # [8, 5]
    data = types.SimpleNamespace(
        batch={"advantages": advantages, "response_mask": mask},
        # balance_batch's order: the groups of two are spread over both ranks and mini-batches
        non_tensor_batch={"uid": np.array(["a", "b", "c", "d", "b", "a", "d", "c"], dtype=object)},
    )
    folder = tmp_path / "batches"
    log_verl_batch(folder, data, step=1, config=verl_config(agg, scale, epochs))
    flush_batch_logs()
    assert (folder / "verl_config.yaml").is_file()
    document, got = weights_from_folder(folder, tmp_path)
    config = document["config"]
    assert config["trainer"] == "verl" and config["files"] == [str(folder / "verl_config.yaml")]
    assert any("written into the log folder" in line for line in config["overrides"])
    layout = config["layout_used"]
    assert (layout["dp_size"], layout["mini_batch_size"], layout["micro_batch_size"]) == (2, 4, 1)
    # verl's side: 2 ranks of 4 rows, mini-batches of 2 rows per rank, micro-batches of 1 row, width 5
    reference = {"dp": 2, "n": 2, "mini": 2, "micro": 1, "agg": agg, "scale": scale, "epochs": epochs}
    want = torch.stack(verl_weights([WIDTH] * ROWS, mask.tolist(), reference)).numpy()
    np.testing.assert_allclose(got[config["mode"]], want, rtol=1e-6, atol=1e-12)
    assert np.count_nonzero(want) == int(mask.sum())


def skyrl_batch(mask: torch.Tensor, uids: list[str]) -> object:
    """What the hook reads of SkyRL's ``TrainingInputBatch``: tensors by key and ``metadata``."""
    batch = type("TrainingInputBatch", (dict,), {})(advantages=torch.ones(mask.shape, dtype=torch.float64) * mask, loss_mask=mask)
    batch.metadata = {"uids": uids, "pad_size": 0}  # type: ignore[attr-defined]
    return batch


@pytest.mark.parametrize(
    "reduction", ["token_mean", "token_mean_legacy", "sequence_mean", "seq_mean_token_sum_norm", "prompt_mean"]
)
def test_skyrl_folder_weights_equal_skyrl_loss_reduction_under_the_logged_config(tmp_path: Path, reduction: str) -> None:
    from omegaconf import OmegaConf

    mask = response_masks(seed=len(reduction))
    uids = [f"q{row // 2}" for row in range(ROWS)]
    config = OmegaConf.create(
        {
            "trainer": {
                "train_batch_size": 4,
                "policy_mini_batch_size": 2,
                "micro_train_batch_size_per_gpu": 1,
                "update_epochs_per_batch": 1,
                "export_path": str(tmp_path),
                "placement": {"policy_num_gpus_per_node": 2, "policy_num_nodes": 1},
                "algorithm": {"loss_reduction": reduction, "max_seq_len": 64, "eps_clip_low": 0.2},
            },
            "generator": {"n_samples_per_prompt": 2},
        }
    )
    folder = tmp_path / "batches"
    log_skyrl_batch(folder, skyrl_batch(mask, uids), step=3, config=config)
    flush_batch_logs()
    document, got = weights_from_folder(folder, tmp_path)
    assert document["config"]["trainer"] == "skyrl" and document["config"]["mode"] == reduction
    step = {"mini": 2, "prompts": 4, "n": 2, "micro": 1, "reduction": reduction, "epochs": 1}
    want = skyrl_weights(mask.double(), uids, step, max_seq_len=64) * mask
    np.testing.assert_allclose(got[reduction], want.numpy(), rtol=1e-6, atol=1e-12)


def test_flags_and_config_win_over_the_logged_config_and_say_so(tmp_path: Path) -> None:
    mask = response_masks(seed=1)
    folder = tmp_path / "batches"
    log_skyrl_batch(folder, skyrl_batch(mask, [f"q{row // 2}" for row in range(ROWS)]), step=3, config={"trainer": {}})
    flush_batch_logs()
    document, _ = weights_from_folder(folder, tmp_path, "--micro-batch-size", "2")
    config = document["config"]
    assert config["layout_used"]["micro_batch_size"] == 2
    assert any(line.startswith("--micro-batch-size 2 (command line) wins") for line in config["overrides"])
    other = tmp_path / "other.yaml"
    other.write_text("trainer:\n  policy_mini_batch_size: 1\n  train_batch_size: 4\ngenerator:\n  n_samples_per_prompt: 2\n")
    document, _ = weights_from_folder(folder, tmp_path, "--config", str(other))
    config = document["config"]
    assert config["files"] == [str(other)] and config["layout_used"]["mini_batch_prompts"] == 1
    assert f"the log folder's skyrl_config.yaml is not used: --config {other} given" in config["overrides"]


def test_inspect_names_the_log_folders_config(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    log_skyrl_batch(
        folder, skyrl_batch(response_masks(seed=2), [f"q{row // 2}" for row in range(ROWS)]), step=1, config={"trainer": {}}
    )
    flush_batch_logs()
    listed = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["logged_config"] == str(folder / "skyrl_config.yaml")
    shown = runner.invoke(app, ["inspect", str(folder)], env={"COLUMNS": "200"})
    assert f"trainer config: {folder / 'skyrl_config.yaml'} (skyrl" in " ".join(shown.stdout.split())


def test_two_trainers_configs_in_one_folder_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    log_skyrl_batch(folder, skyrl_batch(response_masks(seed=2), ["q"] * ROWS), step=3, config={"trainer": {}})
    flush_batch_logs()
    write_config(folder, "{}")
    result = runner.invoke(app, ["weights", str(folder)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"aggscope: error: {folder}: holds skyrl_config.yaml and grpo_config.json, the configs of two trainers; "
        "give --config FILE to say which to use"
    )


def test_config_yaml_writes_dataclasses_and_refuses_other_objects() -> None:
    import dataclasses
    import enum

    import yaml

    class Strategy(enum.Enum):
        FSDP = "fsdp2"

    @dataclasses.dataclass
    class Trainer:  # SkyRL 0.4.0's configs are dataclasses like this one
        strategy: Strategy = Strategy.FSDP
        export_path: Path = Path("/runs/x")
        sizes: tuple[int, ...] = (1, 2)

    assert yaml.safe_load(config_yaml({"trainer": Trainer()}, "w")) == {
        "trainer": {"strategy": "fsdp2", "export_path": "/runs/x", "sizes": [1, 2]}
    }
    with pytest.raises(
        AggscopeError, match=r"^w: config must be the trainer's OmegaConf DictConfig, a dataclass or a mapping, not int$"
    ):
        config_yaml(3, "w")


@pytest.mark.slow
def test_trl_config_file_gives_the_layout_of_the_grpo_config(tmp_path: Path) -> None:
    from trl_env import trl_python

    # a real GRPOConfig: 4 completions per device, 2 micro-batches per optimizer step, 2 iterations
    made = subprocess.run(
        [
            trl_python("a real GRPOConfig"),
            "-c",
            "from trl import GRPOConfig; print(GRPOConfig(output_dir='o', per_device_train_batch_size=4, "
            "gradient_accumulation_steps=2, num_generations=4, loss_type='bnpo', num_iterations=2, "
            "max_completion_length=16, use_cpu=True, report_to=[]).to_json_string())",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    folder = tmp_path / "batches"
    write_config(folder, made.stdout)  # what the mixin writes
    from aggscope.trainer.batch_log import log_batch

    log_batch(folder, step=1, uids=["p"] * 8, advantages=torch.linspace(-1, 1, 8), loss_mask=torch.ones(8, 3))
    flush_batch_logs()
    document, _ = weights_from_folder(folder, tmp_path)
    config = document["config"]
    assert config["trainer"] == "trl" and config["mode"] == "token_mean_legacy"  # loss_type bnpo
    layout = config["layout_used"]
    # one process x 2 micro-batches x 4 completions per optimizer step; the mixin logged TRL's order
    # and each iteration as its own optimizer step: no reshuffle, one pass
    assert (layout["mini_batch_size"], layout["micro_batch_size"], layout["dp_size"]) == (8, 4, 1)
    assert (layout["order"], layout.get("passes", 1)) == ("logged", 1)  # passes: only shown when not 1
    assert config["not_exact"] == []
