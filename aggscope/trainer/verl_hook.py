"""Logging verl's training batch as it trains it: ``log_verl_batch`` on a ``DataProto``.

Call it where verl's trainer has computed the advantages and is about to update the actor (in
``RayPPOTrainer.fit``, right after ``compute_advantage``): the batch is then in ``balance_batch``'s
order, the order verl cuts into rank shards and mini-batches, and holds what every aggregation mode
needs. Fields read (verl 0.9.1's names): ``batch["advantages"]`` and ``batch["response_mask"]``
(``[B, R]`` over the response; ``loss_mask`` where the batch has one, as the v1 agent loop sets it),
``batch["token_level_scores"]`` summed per row as the reward (where present) and
``non_tensor_batch["uid"]`` (the prompt uid). Nothing of verl is imported: any object with those
two mappings works.

Give ``config=`` the trainer's config (``self.config`` of ``RayPPOTrainer``, an OmegaConf
``DictConfig``) and the first call also writes it, resolved, into the folder as
``verl_config.yaml``: every analysing command given the folder then takes the layout (ranks,
mini- and micro-batches, ``loss_agg_mode``) from it, as if ``--config`` had been given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aggscope.errors import AggscopeError
from aggscope.trainer.batch_log import log_batch
from aggscope.trainer.config_file import write_config_once


def log_verl_batch(
    directory: str | os.PathLike[str], data: Any, *, step: int, rank: int | None = None, config: Any = None
) -> Path:
    """Log one verl step's batch (a ``DataProto`` after ``compute_advantage``) with ``log_batch``.

    Args:
        directory: the folder of canonical Parquet files to write into.
        data: the ``DataProto``: ``.batch`` (tensors by name) and ``.non_tensor_batch`` (arrays).
        step: verl's ``global_steps``.
        rank: the rank, where each rank logs its own shard.
        config: the trainer's config (``DictConfig``), written once as ``verl_config.yaml``; None: not written.

    Returns:
        The file the step is written to.
    """
    tensors, extras = getattr(data, "batch", None), getattr(data, "non_tensor_batch", None)
    if tensors is None or extras is None:
        raise AggscopeError(
            f"log_verl_batch: expected a verl DataProto (.batch and .non_tensor_batch), got {type(data).__name__}"
        )
    names = set(tensors.keys())
    mask_name = "loss_mask" if "loss_mask" in names else "response_mask"
    for name in ("advantages", mask_name):
        if name not in names:
            raise AggscopeError(f"log_verl_batch: the batch has no {name!r}; call it after compute_advantage")
    scores = tensors["token_level_scores"].sum(dim=-1) if "token_level_scores" in names else None  # [B]
    uids = extras.get("uid") if hasattr(extras, "get") else None
    write_config_once(directory, "verl", config, rank=rank, where="log_verl_batch")
    return log_batch(
        directory,
        step=step,
        rank=rank,
        advantages=tensors["advantages"],
        loss_mask=tensors[mask_name],
        uids=None if uids is None else [str(uid) for uid in list(uids)],
        rewards=scores,
    )
