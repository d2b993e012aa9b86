"""Logging TRL's ``GRPOTrainer`` batches exactly as trained: a mixin built on ``log_batch``.

TRL's ``log_completions`` writes decoded text; what it trains is token ids, a completion mask
that keeps the first EOS (and zeroes truncated completions under ``mask_truncated_completions``),
and a generation batch shuffled before it is cut into micro-batches. This mixin logs each
micro-batch as the trainer feeds it to the loss, so every command reads exact numbers::

    from trl import GRPOConfig, GRPOTrainer
    from aggscope.trainer.trl import AggscopeGRPOMixin

    class Trainer(AggscopeGRPOMixin, GRPOTrainer):
        aggscope_folder = "runs/exp1/batches"    # default: {output_dir}/aggscope_batches

    Trainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...).train()

Each training micro-step (``GRPOTrainer._prepare_inputs``) logs its rows with ``log_batch``:
``advantages`` (one per row), ``loss_mask`` (``completion_mask``, times ``tool_mask`` in
multi-turn runs) over the padded completion, and ``uids`` hashed from the prompt's token ids with
its padding cut off by ``prompt_mask`` (the same prompt drawn into two groups of one generation
shares a uid; TRL's groups are its positions). The step is TRL's optimizer step number as its own logs
and ``completions_{step:05d}.parquet`` count it (``state.global_step + 1`` while the step runs).
Every process writes its own shard (``rank=``), one file per micro-batch (``_part``), so a step
reads back rank by rank, micro-batch by micro-batch: the order the layout's ``order=logged``
takes. The main process also writes ``grpo_config.json`` (``args.to_json_string()``) into the
folder once, for ``--config``. Passes after the first (``num_iterations > 1``) are logged as the
optimizer steps they are. Rewards (the ``nansum`` of the reward functions with
``reward_weights``, NaN where all returned None) are logged too: the mixin adds them to the batch
TRL shuffles and splits, and takes them out again before the loss. Not logged: the importance
ratio, and the entropy and off-policy masks applied inside the loss.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from aggscope.core.batch import text_uid
from aggscope.errors import AggscopeError
from aggscope.io.logged_config import CONFIG_NAMES, write_logged_config
from aggscope.trainer.batch_log import flush_batch_logs, log_batch

CONFIG_NAME = CONFIG_NAMES["trl"]  # grpo_config.json


def prompt_uids(prompt_ids: Any, prompt_mask: Any) -> list[str]:
    """``[B]`` uids from left-padded ``[B, P]`` prompt ids: each row's real tokens (``prompt_mask``) hashed."""
    ids = prompt_ids.detach().cpu().tolist()
    keep = prompt_mask.detach().cpu().bool().tolist()
    return [
        text_uid(" ".join(str(t) for t, kept in zip(row, mask, strict=True) if kept)) for row, mask in zip(ids, keep, strict=True)
    ]


REWARD_KEY = "aggscope_rewards"


def local_rewards(trainer: Any, n_local: int) -> Any:
    """``[n_local]`` this process's rewards of the generation just scored, as TRL sums them.

    TRL keeps the gathered per-function rewards of the generation in ``_logs["rewards"]`` (the
    last ``n_local x num_processes`` values of each); the reward is their ``nansum`` with
    ``reward_weights``, NaN where every function returned None (TRL's unscorable rows).
    """
    import torch

    accelerator = trainer.accelerator
    n_global = n_local * accelerator.num_processes
    per_function = torch.tensor(
        [list(trainer._logs["rewards"][name])[-n_global:] for name in trainer.reward_func_names], dtype=torch.float64
    ).T  # [n_global, n_functions]
    weights = trainer.reward_weights.to(torch.float64)  # [n_functions]
    rewards = (per_function * weights).nansum(dim=1)  # [n_global]
    rewards[torch.isnan(per_function).all(dim=1)] = float("nan")
    start = accelerator.process_index * n_local
    return rewards[start : start + n_local]


def log_grpo_micro_batch(folder: str | os.PathLike[str], inputs: dict[str, Any], *, step: int, rank: int | None) -> Path:
    """Log one micro-batch of ``GRPOTrainer`` (the dict ``_prepare_inputs`` returns) with ``log_batch``.

    Args:
        folder: the folder of canonical Parquet files.
        inputs: TRL's micro-batch: ``prompt_ids``/``prompt_mask`` ``[B, P]``, ``completion_mask``
            ``[B, C]``, ``advantages`` ``[B]``, optionally ``tool_mask`` ``[B, C]`` and the mixin's
            ``aggscope_rewards`` ``[B]``.
        step: the optimizer step (TRL's 1-based count).
        rank: the process index, or None for a single process.
    """
    loss_mask = inputs["completion_mask"]  # [B, C], the first EOS included
    if inputs.get("tool_mask") is not None:
        loss_mask = loss_mask * inputs["tool_mask"]  # tool output is not trained
    return log_batch(
        folder,
        step=step,
        rank=rank,
        uids=prompt_uids(inputs["prompt_ids"], inputs["prompt_mask"]),
        advantages=inputs["advantages"],
        loss_mask=loss_mask,
        rewards=inputs.get(REWARD_KEY),
    )


class AggscopeGRPOMixin:
    """Put before ``GRPOTrainer`` in the bases: logs every training micro-batch (see the module docstring).

    Attributes:
        aggscope_folder: where to log; None for ``{args.output_dir}/aggscope_batches``.
    """

    aggscope_folder: str | None = None
    _aggscope_config_written = False

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        trainer: Any = self
        if trainer.model.training:  # the rows' rewards ride along through TRL's shuffle and split
            output = {**output, REWARD_KEY: local_rewards(trainer, len(output["advantages"]))}
        return output

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        inputs = super()._prepare_inputs(generation_batch)  # type: ignore[misc]
        trainer: Any = self
        if trainer.model.training:
            folder = self.aggscope_folder or os.path.join(trainer.args.output_dir, "aggscope_batches")
            accelerator = trainer.accelerator
            if accelerator.is_main_process and not self._aggscope_config_written:
                write_config(folder, trainer.args.to_json_string())
                self._aggscope_config_written = True
            rank = accelerator.process_index if accelerator.num_processes > 1 else None
            log_grpo_micro_batch(folder, inputs, step=trainer.state.global_step + 1, rank=rank)
        if isinstance(inputs, dict) and REWARD_KEY in inputs:  # the loss sees TRL's own keys only (buffer untouched)
            inputs = {key: value for key, value in inputs.items() if key != REWARD_KEY}
        return inputs

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            flush_batch_logs()  # every logged step on disk when training returns


def write_config(folder: str | os.PathLike[str], config_json: str) -> Path:
    """Write the trainer's config (JSON text) whole into ``folder/grpo_config.json``."""
    return write_logged_config(folder, "trl", config_json)


def grpo_trainer_class() -> type:
    """``GRPOTrainer`` with the mixin, for ``Trainer = grpo_trainer_class()``; one line when TRL is missing."""
    if importlib.util.find_spec("trl") is None:
        raise AggscopeError("aggscope.trainer.trl needs TRL, which is not installed here: pip install trl")
    from trl import GRPOTrainer

    return type("AggscopeGRPOTrainer", (AggscopeGRPOMixin, GRPOTrainer), {})
