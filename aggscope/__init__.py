"""aggscope: see how much gradient each token, response and prompt of an RL batch gets.

The library behind the ``aggscope`` command. Typical use::

    import aggscope
    rollouts = aggscope.open_rollouts("rollouts/")            # Parquet file, directory or glob
    layout = aggscope.Layout(mini_batch_size=256, micro_batch_size=8, dp_size=4)
    for batch in rollouts.iter_steps():
        weights = aggscope.compute_weights(batch, "token_mean", layout)
        print(batch.step, weights.summary())

or, inside a trainer, log the batch it trains on (a background thread writes one Parquet file per
step; ``aggscope.flush_batch_logs()`` at the end of training)::

    aggscope.log_batch("runs/exp1/batches", step=step, uids=uids, advantages=advantages,
                       loss_mask=loss_mask, rewards=rewards)

or analyse the tensors it is about to train on (results stay on their device)::

    batch = aggscope.StepBatch.from_padded(advantages, loss_mask, uids=uids)   # [B, L]
    per_token = aggscope.compute_weights(batch, "seq-mean-token-mean").token_weights().view(B, L)

Names are imported on first use, so ``import aggscope`` does not import torch or pyarrow.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AggscopeError": "aggscope.errors",
    "StepBatch": "aggscope.core.batch",
    "SequenceStats": "aggscope.core.batch",
    "Layout": "aggscope.core.layout",
    "split_step": "aggscope.core.split",
    "MODES": "aggscope.core.modes",
    "resolve_mode": "aggscope.core.modes",
    "register": "aggscope.core.modes",
    "compute_weights": "aggscope.core.weights",
    "analyse_step": "aggscope.core.weights",
    "run_weights": "aggscope.analysis.weights",
    "select_modes": "aggscope.core.weights",
    "summarize": "aggscope.core.summaries",
    "open_rollouts": "aggscope.io.open",
    "load_steps": "aggscope.io.open",
    "parse_spec": "aggscope.analysis.specs",
    "run_breakdown": "aggscope.analysis.breakdown",
    "make_figures": "aggscope.present.figure_set",
    "compare": "aggscope.present.report",
    "full_report": "aggscope.present.report",
    "text_uid": "aggscope.core.batch",
    "log_batch": "aggscope.trainer.batch_log",
    "flush_batch_logs": "aggscope.trainer.batch_log",
    "close_batch_logs": "aggscope.trainer.batch_log",
    "BatchLogger": "aggscope.trainer.batch_log",
    "assert_prompts_intact": "aggscope.trainer.guards",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aggscope' has no attribute {name!r}")
    return getattr(import_module(module), name)
