"""Reading a trainer's config from the files a user of that trainer has on disk.

- YAML (verl and SkyRL Hydra configs, a run's ``.hydra/config.yaml``, NeMo-RL, a TRL CLI YAML)
  and JSON (``GRPOConfig.to_json_string()``) are read with OmegaConf, which resolves ``${...}``
  interpolations as Hydra does. A ``defaults:`` list naming files next to the config (NeMo-RL's
  ``defaults: base.yaml``, Hydra's ``- base`` or ``- group: option``) is composed before the file
  itself (Hydra's ``_self_`` last); an entry that is not a file there (verl's own
  ``ppo_trainer``) is left to the trainer preset's defaults and named in a note.
- TOML (prime-rl) is read with ``tomllib``.
- A command line saved as text (``.sh``, ``.txt``, ``.args``, ``.cmd``: OpenRLHF's
  ``--train.batch_size 128`` arguments, Hydra's ``key=value`` overrides) is split as a shell
  would; values are typed as YAML types them (``64``, ``true``, ``null``).
- Pickles are never opened: ``training_args.bin`` runs code when unpickled.

Every source becomes a flat ``{dotted.key: value}`` mapping with the file each key came from, so
a bad value names its file and key. Later sources win over earlier ones, and ``--set`` wins last.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggscope.errors import AggscopeError

YAML_SUFFIXES = (".yaml", ".yml", ".json")
TOML_SUFFIXES = (".toml",)
COMMAND_LINE_SUFFIXES = (".sh", ".txt", ".args", ".cmd")
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth")
SET_SOURCE = "--set"
# NeMo-RL's configs use these OmegaConf resolvers (nemo_rl/utils/config.py registers the same).
_RESOLVERS = {"mul": lambda a, b: a * b, "add": lambda a, b: a + b, "div": lambda a, b: a / b, "max": lambda a, b: max(a, b)}


@dataclass
class ConfigFiles:
    """A trainer config read from files and overrides: flat dotted keys, where each came from.

    Attributes:
        values: ``{dotted.key: value}``, leaves only (a list is a leaf).
        origin: the file (or ``--set``) each key's value came from.
        files: the files read, in order.
        kind: ``yaml``, ``toml`` or ``command line`` (of the last file), to help infer the trainer.
        missing_defaults: ``defaults:`` entries that named no file aggscope could read.
        command: program names seen on a saved command line (``openrlhf.cli.train_ppo_ray``).
        file_keys: keys some file set (before any ``--set``).
        added: keys a ``--set +KEY=VALUE`` adds on purpose (Hydra's spelling for a new key).
    """

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    kind: str | None = None
    missing_defaults: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    file_keys: set[str] = field(default_factory=set)
    added: set[str] = field(default_factory=set)

    def where(self, key: str) -> str:
        """The file a key's value came from, else the last file read (where it would go)."""
        return self.origin.get(key) or (self.files[-1] if self.files else SET_SOURCE)

    def update(self, values: Mapping[str, Any], source: str) -> None:
        for key, value in values.items():
            # A section given anew replaces the leaves under it (``--set a={}``, a YAML mapping).
            self.values[key] = value
            self.origin[key] = source
            if source != SET_SOURCE:
                self.file_keys.add(key)


def read_config(paths: Sequence[str], sets: Sequence[str] = ()) -> ConfigFiles:
    """Read every config file in order, then the ``KEY=VALUE`` overrides (later wins)."""
    config = ConfigFiles()
    for path in paths:
        read_one(path, config)
    config.update(parse_overrides(sets, SET_SOURCE), SET_SOURCE)
    config.added = {item.partition("=")[0].strip().lstrip("+") for item in sets if item.strip().startswith("+")}
    return config


def read_one(path: str, config: ConfigFiles) -> None:
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise AggscopeError(
            f"{path}: a pickle, which runs code when opened: aggscope never unpickles a config. Give the text form instead: "
            "for TRL the GRPOConfig as JSON (args.to_json_string(), or the 'args' of a saved run) or the YAML passed to "
            "'trl grpo --config'; for verl and SkyRL the run's .hydra/config.yaml"
        )
    if not file.is_file():
        raise AggscopeError(f"{path}: no such config file")
    config.files.append(path)
    if suffix in YAML_SUFFIXES:
        config.kind = "yaml"
        config.update(flatten(_omegaconf_load(file, config)), path)
    elif suffix in TOML_SUFFIXES:
        config.kind = "toml"
        config.update(flatten(_toml_load(file)), path)
    elif suffix in COMMAND_LINE_SUFFIXES:
        config.kind = "command line"
        values, programs = parse_command_line(file.read_text(encoding="utf-8", errors="replace"), path)
        config.command += programs
        config.update(values, path)
    else:
        raise AggscopeError(
            f"{path}: unknown config type {suffix or '(no suffix)'!r}; give a YAML or JSON file (verl, SkyRL, NeMo-RL, TRL), "
            f"a TOML file (prime-rl) or a saved command line ({', '.join(COMMAND_LINE_SUFFIXES)}: OpenRLHF)"
        )


# ---- YAML and JSON (OmegaConf) -----------------------------------------------------------------
def _omegaconf() -> Any:
    try:
        import omegaconf
    except ImportError:  # pragma: no cover - a dependency; the message says how to get it back
        raise AggscopeError("reading a YAML or JSON config needs OmegaConf: pip install omegaconf") from None
    conf = omegaconf.OmegaConf
    for name, function in _RESOLVERS.items():
        if conf.has_resolver(name):
            continue
        if hasattr(conf, "register_resolver"):  # OmegaConf 2.4
            conf.register_resolver(name, function, annotation_validation="off")
        else:  # pragma: no cover - OmegaConf 2.1-2.3
            conf.register_new_resolver(name, function)
    return omegaconf


def _omegaconf_load(file: Path, config: ConfigFiles) -> dict[str, Any]:
    omegaconf = _omegaconf()
    composed = _compose(file, config, omegaconf, depth=0)
    try:
        resolved = omegaconf.OmegaConf.to_container(composed, resolve=True)
    except omegaconf.errors.OmegaConfBaseException as exc:
        raise AggscopeError(f"{file}: {_omegaconf_message(exc)}") from None
    if not isinstance(resolved, dict):
        raise AggscopeError(f"{file}: the config must be a mapping of keys to values, not a {type(resolved).__name__}")
    # TRL: the ``args`` block of a saved run (its GRPOConfig as a dict) is the config.
    if set(resolved) == {"args"} and isinstance(resolved["args"], dict):
        resolved = resolved["args"]
    return resolved


def _omegaconf_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    full_key = getattr(exc, "full_key", None)
    where = f"key {full_key}: " if full_key else ""
    return f"{where}{text[0] if text else type(exc).__name__} (fix the value or give it with --set KEY=VALUE)"


def _compose(file: Path, config: ConfigFiles, omegaconf: Any, depth: int) -> Any:
    """The file merged over the files its ``defaults:`` list names (as NeMo-RL and Hydra compose)."""
    if depth > 16:
        raise AggscopeError(f"{file}: defaults: nest more than 16 levels deep (a file that includes itself?)")
    try:
        loaded = omegaconf.OmegaConf.load(file)
    except Exception as exc:  # YAML syntax errors come in several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AggscopeError(f"{file}: not valid YAML or JSON ({first})") from None
    if not isinstance(loaded, omegaconf.DictConfig):
        raise AggscopeError(f"{file}: the config must be a mapping of keys to values, not a list")
    if "defaults" not in loaded:
        return loaded
    entries = loaded.pop("defaults")
    if isinstance(entries, str):
        entries = [entries]
    elif isinstance(entries, omegaconf.ListConfig):
        entries = list(entries)
    else:  # Hydra's defaults is a list of file names (or a single one)
        raise AggscopeError(f"{file}: defaults: must be a list of config files, not {type(entries).__name__} {entries!r}")
    before: list[Any] = []
    after: list[Any] = []
    self_seen = False
    for entry in entries:
        if entry == "_self_":
            self_seen = True
            continue
        part = _default_entry(file, entry, config, omegaconf, depth)
        if part is not None:
            (after if self_seen else before).append(part)
    # Hydra puts the file itself after its defaults unless ``_self_`` says otherwise.
    return omegaconf.OmegaConf.merge(*before, loaded, *after) if before or after else loaded


def _default_entry(file: Path, entry: Any, config: ConfigFiles, omegaconf: Any, depth: int) -> Any:
    """One ``defaults:`` entry as a config to merge, or None when it names no readable file."""
    if isinstance(entry, str):
        group, option, package = None, entry, None
    elif isinstance(entry, Mapping) and len(entry) == 1:
        ((key, option),) = entry.items()
        key = str(key).removeprefix("override ").strip()
        group, _, package = key.partition("@")
        package = package or None
        if option is None:
            return None  # ``- group: null`` removes a default
    else:
        raise AggscopeError(f"{file}: defaults: {entry!r} is not a file name or a 'group: option' entry")
    name = str(option)
    folder = file.parent / group if group else file.parent
    candidates = [folder / name] if Path(name).suffix else [folder / f"{name}.yaml", folder / f"{name}.yml"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        config.missing_defaults.append(f"{group}: {name}" if group else name)
        return None
    part = _compose(found, config, omegaconf, depth + 1)
    placement = package if package not in (None, "_here_") else (None if package == "_here_" else group)
    if placement and placement != "_global_":
        for piece in reversed(placement.split(".")):
            part = omegaconf.OmegaConf.create({piece: part})
    return part


# ---- TOML --------------------------------------------------------------------------------------
def _toml_load(file: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(file, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise AggscopeError(f"{file}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise AggscopeError(f"{file}: not valid TOML (the byte at offset {exc.start} is not UTF-8 text)") from None
    except RecursionError:
        raise AggscopeError(f"{file}: not valid TOML for aggscope (arrays or tables nested too deep to read)") from None


# ---- command lines -----------------------------------------------------------------------------
def parse_command_line(text: str, source: str) -> tuple[dict[str, Any], list[str]]:
    """Arguments of a saved command line: ``--key value`` / ``--key=value`` / ``--flag`` (argparse,
    OpenRLHF) and ``key=value`` (Hydra overrides, verl and SkyRL). Returns the values and the
    programs named (``python -m openrlhf.cli.train_ppo_ray`` gives ``openrlhf.cli.train_ppo_ray``)."""
    joined = text.replace("\\\r\n", " ").replace("\\\n", " ")
    try:
        tokens = shlex.split(joined, comments=True)
    except ValueError as exc:
        raise AggscopeError(f"{source}: cannot split the command line ({exc}); check its quotes") from None
    values: dict[str, Any] = {}
    programs: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token.startswith("--") and len(token) > 2:
            key, sep, value = token[2:].partition("=")
            if sep:
                values[key] = _typed(value)
                continue
            following = []
            while index < len(tokens) and not tokens[index].startswith("--") and "=" not in tokens[index]:
                following.append(tokens[index])
                index += 1
            values[key] = (
                True if not following else _typed(following[0]) if len(following) == 1 else [_typed(v) for v in following]
            )
        elif "=" in token and not token.startswith("-") and "/" not in token.partition("=")[0]:
            key, _, value = token.partition("=")
            key = key.lstrip("+~")
            # ``NAME=value`` in capitals is an environment variable set for the command, not an override.
            if (key.isidentifier() or "." in key) and not key.isupper():
                values[key] = _typed(value)
        elif token.startswith(("openrlhf", "verl", "skyrl", "nemo_rl", "prime_rl", "trl")) or token.endswith(".py"):
            programs.append(token)
    return values, programs


def parse_overrides(items: Iterable[str], source: str) -> dict[str, Any]:
    """``KEY=VALUE`` overrides in the trainer's own spelling (Hydra's ``+`` / ``++`` prefixes allowed)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("+").removeprefix("--")
        if not sep or not key:
            raise AggscopeError(f"{source} {item!r}: write KEY=VALUE in the trainer's own spelling, e.g. trainer.nnodes=2")
        values[key] = _typed(value.strip())
    return values


def _typed(text: str) -> Any:
    """A command-line value typed as Hydra types it (YAML scalars: 64, 0.5, true, null, [1, 2])."""
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, set)) else value


# ---- flat keys ---------------------------------------------------------------------------------
def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping stays a leaf."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def display_path(path: str) -> str:
    """A path as given, shortened to the working folder where it lies under it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
