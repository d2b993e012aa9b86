"""Two configs of one trainer side by side: which keys differ, and what each change does to the weights.

``compare --from-config old.yaml --to-config new.yaml`` reads both, and the report opens with one
line per differing key (old value -> new value): the derived values it moves (``mini-batch-size
128 -> 64``, ``optimizer updates per step 2 -> 4``, the mode, the horizon), or that it changes the loss
but not the weights aggscope computes, or that it changes no weight at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggscope.errors import AggscopeError
from aggscope.presets.setup import FLAG_NAMES, TrainerSetup, short

_ABSENT = object()


@dataclass(frozen=True)
class ConfigChoice:
    """A ``--to-config`` argument: ``FILE[,KEY=VALUE...]``, or ``,KEY=VALUE...`` for the base config with changes."""

    paths: tuple[str, ...]
    sets: tuple[str, ...]
    label: str


def parse_config_choice(text: str, base_paths: Sequence[str]) -> ConfigChoice:
    """``new.yaml`` / ``new.yaml,a.b=1`` / ``,a.b=1`` (the ``--from-config`` files with ``a.b=1``).

    Raises:
        AggscopeError: one line naming the argument, when an override is not ``KEY=VALUE``.
    """
    head, *overrides = [part.strip() for part in text.split(",")]
    for item in overrides:
        if "=" not in item or not item.partition("=")[0].strip():
            raise AggscopeError(f"--to-config {text!r}: {item!r} is not KEY=VALUE; write FILE[,KEY=VALUE...] or ,KEY=VALUE...")
    if head:
        paths: tuple[str, ...] = (head,)
    elif overrides:
        paths = tuple(base_paths)
    else:
        raise AggscopeError(f"--to-config {text!r}: give a config file, or ,KEY=VALUE changes to the --from-config")
    shortened = [f"{short(item.partition('=')[0].strip().lstrip('+'))}={item.partition('=')[2].strip()}" for item in overrides]
    label = "+".join([Path(paths[-1]).name, *shortened]) if head else "+".join(shortened)
    return ConfigChoice(paths, tuple(overrides), label)


def config_changes(base: TrainerSetup, other: TrainerSetup) -> list[str]:
    """One line per key whose value differs between the two configs, with what it does."""
    if base.trainer != other.trainer:
        raise AggscopeError(
            f"--to-config: a {other.trainer} config against a {base.trainer} --from-config; compare configs of one trainer"
        )
    keys = sorted(set(base.values) | set(other.values))
    lines = []
    unmodelled = {item.key: item.effect for item in (*base.unmodelled, *other.unmodelled)}
    for key in keys:
        old, new = base.values.get(key, _ABSENT), other.values.get(key, _ABSENT)
        if old == new:
            continue
        change = f"{key} {_show(old)} -> {_show(new)}"
        moved = _moved(base, other, key)
        if moved:
            lines.append(f"{change}: {', '.join(moved)}")
        elif key in unmodelled:
            lines.append(f"{change}: changes the loss, not the weights aggscope computes ({unmodelled[key]})")
        else:
            lines.append(f"{change}: changes no weight")
    return lines


def _moved(base: TrainerSetup, other: TrainerSetup, key: str) -> list[str]:
    """The derived values a key feeds that differ between the two setups."""
    names = [d.name for d in (*base.derivations, *other.derivations) if key in d.keys]
    moved = []
    for name in dict.fromkeys(names):
        before, after = base.derivation(name), other.derivation(name)
        old = before.value if before is not None else None
        new = after.value if after is not None else None
        if old != new:
            moved.append(f"{FLAG_NAMES.get(name, name)} {_show(old)} -> {_show(new)}")
    return moved


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
