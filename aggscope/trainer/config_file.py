"""The trainer's config written beside its logged batches, as the YAML ``--config`` reads.

``write_config_once`` turns the config object a trainer holds into text and writes it into the log
folder (``aggscope.io.logged_config`` names the file), once per folder and process, from rank 0 (or
a single process). Every analysing command given that folder then uses it as ``--config``.

Accepted: an OmegaConf ``DictConfig`` (verl's and SkyRL's Hydra config: interpolations resolved,
as they were when the trainer read them), a dataclass (SkyRL 0.4.0's ``SkyRLTrainConfig``) or a
plain mapping. Values YAML cannot hold as such (enums, paths) are written as their value or text.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aggscope.errors import AggscopeError
from aggscope.io.logged_config import write_logged_config

_WRITTEN: set[tuple[str, str]] = set()
_LOCK = threading.Lock()


def config_yaml(config: Any, where: str) -> str:
    """The config as YAML text (see the module docstring for what is accepted)."""
    import yaml

    if type(config).__name__ == "DictConfig" and type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            plain = OmegaConf.to_container(config, resolve=True)
        except Exception:  # an interpolation only the trainer's process resolves: keep it as written
            plain = OmegaConf.to_container(config, resolve=False)
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        plain = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        plain = dict(config)
    else:
        raise AggscopeError(
            f"{where}: config must be the trainer's OmegaConf DictConfig, a dataclass or a mapping, not {type(config).__name__}"
        )
    return str(yaml.safe_dump(_plain(plain), sort_keys=False))


def _plain(value: Any) -> Any:
    """The value as YAML's safe types: mappings, lists, strings, numbers, booleans and null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def write_config_once(folder: str | os.PathLike[str], trainer: str, config: Any, *, rank: int | None, where: str) -> None:
    """Write ``config`` into the log folder the first time this process logs there (rank 0 or None only)."""
    if config is None or rank not in (None, 0):
        return
    key = (str(Path(folder).resolve()), trainer)
    with _LOCK:
        if key in _WRITTEN:
            return
        write_logged_config(folder, trainer, config_yaml(config, where))
        _WRITTEN.add(key)
