"""aggscope: see where the gradient goes under every loss aggregation mode.

The trainer-facing helpers are imported on first use, so ``import aggscope`` stays light:
``aggscope.log_batch``, ``aggscope.flush_batch_logs``, ``aggscope.close_batch_logs``,
``aggscope.BatchLogger`` (``aggscope.batch_log``) and ``aggscope.assert_prompts_intact``
(``aggscope.guards``).
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "log_batch": "aggscope.batch_log",
    "flush_batch_logs": "aggscope.batch_log",
    "close_batch_logs": "aggscope.batch_log",
    "BatchLogger": "aggscope.batch_log",
    "assert_prompts_intact": "aggscope.guards",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aggscope' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
