"""Trainer presets: a trainer's own config file -> the layout, mode, horizon and advantage estimator
aggscope computes with, each value with the keys and arithmetic it came from.

One module per trainer (``verl``, ``skyrl``, ``trl``, ``openrlhf``, ``nemo_rl``, ``prime_rl``), each a
``derive(reader) -> TrainerSetup`` written from that trainer's code (its docstring names the
release and files). ``files`` reads the config files; ``setup`` holds what a preset derives;
``apply`` combines a setup with the layout flags given on the command line (flags win).

    setup = load_setup(["run/.hydra/config.yaml"], sets=["actor_rollout_ref.actor.ppo_mini_batch_size=64"])
    setup.layout, setup.mode            # Layout(mini_batch_size=..., composition="ranks_first", ...), "token_mean"
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

from aggscope.errors import AggscopeError, choose
from aggscope.presets.files import ConfigFiles, read_config
from aggscope.presets.setup import ConfigReader, TrainerSetup

TRAINERS = {
    "verl": "aggscope.presets.verl",
    "skyrl": "aggscope.presets.skyrl",
    "trl": "aggscope.presets.trl",
    "openrlhf": "aggscope.presets.openrlhf",
    "nemo-rl": "aggscope.presets.nemo_rl",
    "prime-rl": "aggscope.presets.prime_rl",
}
TRAINER_ALIASES = {"nemo_rl": "nemo-rl", "nemorl": "nemo-rl", "prime_rl": "prime-rl", "primerl": "prime-rl", "sky-rl": "skyrl"}
# The dump formats (aggscope.io.readers) that only one trainer writes.
FORMAT_TRAINERS = {"verl": "verl", "trl": "trl", "skyrl": "skyrl", "nemo-rl": "nemo-rl", "prime-rl": "prime-rl"}


def resolve_trainer(name: str) -> str:
    return choose("--trainer", name, tuple(TRAINERS), TRAINER_ALIASES, "trainer")


def load_setup(
    paths: Sequence[str],
    *,
    trainer: str | None = None,
    sets: Sequence[str] = (),
    input_format: str | None = None,
    logged: bool = False,
) -> TrainerSetup:
    """Read the config files and overrides and derive the trainer's setup.

    Args:
        paths: config files, read in order (later ones win).
        trainer: the trainer's name; None infers it from the config's keys, else from ``input_format``.
        sets: ``KEY=VALUE`` overrides in the trainer's own spelling (win over the files).
        input_format: the format of the rollouts being analysed (a trainer's dump implies the trainer).
        logged: the rollouts are the log a trainer integration wrote beside this config, in the
            trainer's own order (``ConfigReader.logged``).

    Raises:
        AggscopeError: one line naming the file and key, for a config the trainer would refuse.
    """
    if not paths and trainer is None:
        raise AggscopeError("--set needs a config: give --config FILE or --trainer NAME (then --set starts from its defaults)")
    config = read_config(paths, sets)
    name = resolve_trainer(trainer) if trainer is not None else infer_trainer(config, input_format)
    module = import_module(TRAINERS[name])
    setup: TrainerSetup = module.derive(ConfigReader(config, name, logged=logged))
    return setup


def infer_trainer(config: ConfigFiles, input_format: str | None = None) -> str:
    """The trainer a config belongs to, from its keys (each preset's ``DETECT``) or the input's format."""
    found = []
    for name, module_name in TRAINERS.items():
        detect = import_module(module_name).DETECT
        if any(key == d or (d.endswith(".") and key.startswith(d)) for key in config.values for d in detect):
            found.append(name)
    if any("openrlhf" in program for program in config.command):
        found = ["openrlhf"]
    elif config.kind == "toml" and not found:
        found = ["prime-rl"]
    where = ", ".join(config.files) or "--set"
    from_input = FORMAT_TRAINERS.get(input_format or "")
    if len(found) > 1:
        raise AggscopeError(f"{where}: has keys of {' and '.join(found)}; say which trainer it is for with --trainer")
    if found:
        if from_input is not None and from_input != found[0]:
            raise AggscopeError(
                f"{where}: looks like a {found[0]} config but the input is a {input_format} dump; give --trainer to say which"
            )
        return found[0]
    if from_input is not None:
        return from_input
    raise AggscopeError(
        f"{where}: cannot tell which trainer this config is for (none of its keys is one a preset knows); "
        f"give --trainer ({', '.join(TRAINERS)})"
    )


__all__ = ["TRAINERS", "ConfigReader", "TrainerSetup", "infer_trainer", "load_setup", "resolve_trainer"]
