"""aggscope: see how much gradient each token, response and prompt of an RL batch gets.

The library behind the ``aggscope`` command. Typical use::

    import aggscope
    rollouts = aggscope.open_rollouts("rollouts/")            # Parquet file, directory or glob
    layout = aggscope.Layout(mini_batch_size=256, micro_batch_size=8, dp_size=4)
    for batch in rollouts.iter_steps():
        weights = aggscope.compute_weights(batch, "token_mean", layout)
        print(batch.step, weights.summary())

or, inside a trainer, on the tensors it is about to train on (results stay on their device)::

    batch = aggscope.StepBatch.from_padded(advantages, loss_mask, uids=uids)   # [B, L]
    per_token = aggscope.compute_weights(batch, "seq-mean-token-mean").token_weights().view(B, L)

Names are imported on first use, so ``import aggscope`` does not import torch or pyarrow.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AggscopeError": "aggscope.errors",
    "StepBatch": "aggscope.batch",
    "SequenceStats": "aggscope.batch",
    "Layout": "aggscope.layout",
    "split_step": "aggscope.layout",
    "MODES": "aggscope.modes",
    "resolve_mode": "aggscope.modes",
    "register": "aggscope.modes",
    "compute_weights": "aggscope.weights",
    "analyse_step": "aggscope.weights",
    "run_weights": "aggscope.weights",
    "select_modes": "aggscope.weights",
    "summarize": "aggscope.weights",
    "open_rollouts": "aggscope.loading",
    "load_steps": "aggscope.loading",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aggscope' has no attribute {name!r}")
    return getattr(import_module(module), name)
