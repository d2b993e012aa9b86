"""The trainer config a hook writes into its log folder, and finding it again beside the batches.

The trainer integrations (``aggscope.trainer``: the verl and SkyRL hooks, the TRL mixin) write the
trainer's config once into the folder they log batches to, as the text file ``--config`` reads:
``verl_config.yaml`` and ``skyrl_config.yaml`` (the resolved OmegaConf YAML), ``grpo_config.json``
(``GRPOConfig.to_json_string()``). ``logged_config`` finds that file for an input path (the log
folder, or one ``step_*.parquet`` file in it), so every analysing command uses it as if
``--config`` had been given. A file is only ever read as YAML or JSON, never unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

from aggscope.errors import AggscopeError

# file name -> the trainer whose hook writes it
LOGGED_CONFIGS = {"verl_config.yaml": "verl", "skyrl_config.yaml": "skyrl", "grpo_config.json": "trl"}
CONFIG_NAMES = {trainer: name for name, trainer in LOGGED_CONFIGS.items()}


def logged_config(path: str | None) -> tuple[str, str] | None:
    """``(config file, trainer)`` a hook wrote beside the batches at ``path``, or None.

    Args:
        path: the input as given: a local log folder, or a ``step_*.parquet`` file inside one
            (remote inputs hold no config aggscope looks for).

    Raises:
        AggscopeError: the folder holds configs of two trainers (one line: give ``--config``).
    """
    if path is None or "://" in path:
        return None
    given = Path(path)
    if given.is_dir():
        folder = given
    elif given.is_file() and given.name.startswith("step_") and given.suffix == ".parquet":
        folder = given.parent
    else:
        return None
    found = [(str(folder / name), trainer) for name, trainer in LOGGED_CONFIGS.items() if (folder / name).is_file()]
    if len(found) > 1:
        names = " and ".join(Path(file).name for file, _ in found)
        raise AggscopeError(f"{folder}: holds {names}, the configs of two trainers; give --config FILE to say which to use")
    return found[0] if found else None


def write_logged_config(folder: str | os.PathLike[str], trainer: str, text: str) -> Path:
    """Write the trainer's config text whole into ``folder`` under the name ``logged_config`` finds."""
    from aggscope.io.writing import atomic_output  # a trainer's hook writes; the commands only read

    path = Path(folder) / CONFIG_NAMES[trainer]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return path
