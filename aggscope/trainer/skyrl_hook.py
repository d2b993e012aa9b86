"""Logging SkyRL's training batch as it trains it: ``log_skyrl_batch`` and ``AggscopeSkyrlLogging``.

SkyRL 0.4.0's ``RayPPOTrainer`` computes the advantages in ``compute_advantages_and_returns`` and
then, before training, drops ``metadata["uids"]`` (what ``trainer.dump_data_batch`` writes) and
scales the advantages by its loss reduction in place (what its ``on_step_end`` callbacks see). So
the batch is logged right after ``compute_advantages_and_returns``, where it holds the raw
advantages and the uids, in the order SkyRL cuts into mini-batches and rank shards: mix
``AggscopeSkyrlLogging`` into the trainer class, or call ``log_skyrl_batch`` there yourself.

Fields read (``TrainingInputBatch``): ``advantages`` and ``loss_mask`` (``[B, R]``), ``rewards``
summed per row (where present), ``metadata["uids"]`` (else ``policy_prompt_boundaries``), and
``metadata["pad_size"]``: the padding rows ``pad_training_input_batch`` appended are not logged.
Nothing of SkyRL is imported.

With ``config=`` (the trainer's ``cfg``: SkyRL 0.4.0's ``SkyRLTrainConfig`` dataclass, or a Hydra
``DictConfig``) the first call also writes it into the folder as ``skyrl_config.yaml``; the mixin
does so. Every analysing command given the folder then takes the layout (``policy_mini_batch_size``
in prompts, ranks, micro-batches, ``loss_reduction``) from it, as if ``--config`` had been given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aggscope.errors import AggscopeError
from aggscope.io.readers.skyrl_layout import trained_rows
from aggscope.trainer.batch_log import log_batch
from aggscope.trainer.config_file import write_config_once


def log_skyrl_batch(
    directory: str | os.PathLike[str], data: Any, *, step: int, rank: int | None = None, config: Any = None
) -> Path:
    """Log one SkyRL step's ``TrainingInputBatch`` (after ``compute_advantages_and_returns``) with ``log_batch``.

    Args:
        directory: the folder of canonical Parquet files to write into.
        data: the batch: tensors by key (``data["advantages"]``) and a ``metadata`` dict.
        step: SkyRL's ``global_step``.
        rank: the rank, where each rank logs its own shard.
        config: the trainer's config, written once as ``skyrl_config.yaml``; None: not written.

    Returns:
        The file the step is written to.
    """
    metadata = getattr(data, "metadata", None) or {}
    advantages, loss_mask = _field(data, "advantages"), _field(data, "loss_mask")
    rows = trained_rows(metadata, int(loss_mask.shape[0]), "log_skyrl_batch")
    rewards = _field(data, "rewards", optional=True)
    write_config_once(directory, "skyrl", config, rank=rank, where="log_skyrl_batch")
    return log_batch(
        directory,
        step=step,
        rank=rank,
        advantages=advantages[:rows],
        loss_mask=loss_mask[:rows],
        uids=_uids(metadata, rows),
        rewards=None if rewards is None else rewards[:rows].reshape(rows, -1).sum(dim=-1),
    )


class AggscopeSkyrlLogging:
    """Mix into SkyRL's trainer class to log every step's batch: ``class Trainer(AggscopeSkyrlLogging, RayPPOTrainer)``.

    The folder is ``aggscope_log_dir`` (default ``{trainer.export_path}/aggscope_batches``); the
    trainer's ``cfg`` is written into it once as ``skyrl_config.yaml``.
    """

    aggscope_log_dir: str | None = None

    def compute_advantages_and_returns(self, data: Any) -> Any:
        data = super().compute_advantages_and_returns(data)  # type: ignore[misc]
        folder = self.aggscope_log_dir or os.path.join(self.cfg.trainer.export_path, "aggscope_batches")  # type: ignore[attr-defined]
        log_skyrl_batch(folder, data, step=self.global_step, config=self.cfg)  # type: ignore[attr-defined]
        return data


def _field(data: Any, key: str, *, optional: bool = False) -> Any:
    value = data.get(key) if hasattr(data, "get") else None
    if value is None and not optional:
        raise AggscopeError(f"log_skyrl_batch: the batch has no {key!r}; call it after compute_advantages_and_returns")
    return value


def _uids(metadata: dict[str, Any], rows: int) -> list[str] | None:
    """The rows' uids: ``metadata["uids"]``, else one label per ``policy_prompt_boundaries`` range."""
    if "uids" in metadata:
        return [str(uid) for uid in list(metadata["uids"])[:rows]]
    boundaries = metadata.get("policy_prompt_boundaries")
    if not boundaries:
        return None
    labels = [f"p{k}" for k, (start, end) in enumerate(boundaries) for _ in range(start, end)]
    return (labels + [f"row:{row}" for row in range(len(labels), rows)])[:rows]
