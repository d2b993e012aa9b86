"""A trainer setup combined with what the command line says: explicit flags win, and say so.

``apply_setup`` takes the setup a preset derived, the layout flags the user gave explicitly and
the modes the user named, and returns the layout and modes to compute with and the lines that
tell the reader where each came from. A setup's refusal (a config aggscope cannot compute
exactly) is an error here, unless the user overrode what it concerns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aggscope.core.layout import Layout
from aggscope.core.modes import default_modes, resolve_modes
from aggscope.errors import AggscopeError
from aggscope.presets.setup import FLAG_NAMES, LAYOUT_FIELDS, TrainerSetup

_MINI_BATCH = ("mini_batch_size", "mini_batch_prompts")
_MICRO_BATCH = ("micro_batch_size", "micro_batch_tokens")
# Two ways of giving one size: a flag for one replaces the config's value of the other.
_EITHER_OR = (_MINI_BATCH, _MINI_BATCH[::-1], _MICRO_BATCH, _MICRO_BATCH[::-1])


@dataclass(frozen=True)
class AppliedSetup:
    """The layout and modes to compute with, from a trainer config and the command line.

    Attributes:
        setup: what the config gave.
        layout: the layout used (the config's, with the explicit flags applied).
        modes: the modes to compute: the named ones, else the trainer's mode first and then every
            other mode that applies, for comparison.
        overrides: one sentence per explicit flag that replaced a config value.
        not_exact: the setup's estimates, plus those the input's format adds.
    """

    setup: TrainerSetup
    layout: Layout
    modes: tuple[str, ...]
    overrides: tuple[str, ...]
    not_exact: tuple[str, ...]

    @property
    def notes(self) -> list[str]:
        """Every line a command prints about the config, headline first."""
        setup = self.setup
        headline = (
            f"layout from the {setup.trainer} config ({setup.release}; {', '.join(setup.files) or 'its defaults and --set'}): "
            f"mode {setup.mode} ({_arithmetic(setup, 'mode')})"
        )
        lines = [headline, *self.overrides, *setup.notes]
        lines += [f"not exact: {text}" for text in self.not_exact]
        if setup.unmodelled:
            lines.append(
                f"read, not modelled: {', '.join(u.key for u in setup.unmodelled)} (aggscope inspect --config lists what each does)"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.setup.to_dict(),
            "layout_used": self.layout.to_dict(),
            "modes": list(self.modes),
            "overrides": list(self.overrides),
            "not_exact": list(self.not_exact),
        }


def apply_setup(
    setup: TrainerSetup,
    flags: Mapping[str, Any],
    modes: Sequence[str] | None = None,
    *,
    has_groups: bool = True,
    input_format: str | None = None,
) -> AppliedSetup:
    """Combine a setup with the explicit layout flags (``{field: value}``, only those given) and modes."""
    unknown = set(flags) - set(LAYOUT_FIELDS)
    if unknown:
        raise AggscopeError(f"not layout options: {', '.join(sorted(unknown))}")
    explicit = set(flags) | ({"mode"} if modes else set())
    overrides = []
    for refusal in setup.refusals:
        lifted = refusal.fields & explicit
        if not lifted:
            raise AggscopeError(refusal.message)
        given = ", ".join(f"--{FLAG_NAMES[name]}" for name in sorted(lifted))
        overrides.append(
            f"{given} given: the numbers follow what the command line asks, not the config, which aggscope would refuse ({refusal.message})"
        )
    values = asdict(setup.layout)  # every field, set or not
    for name, value in flags.items():
        if values[name] != value:
            overrides.append(
                f"--{FLAG_NAMES[name]} {value} (command line) wins over the config's {_derived(setup, name, values[name])}"
            )
        values[name] = value
    for name, other in _EITHER_OR:
        if name in flags and other not in flags and values[other] is not None:
            overrides.append(f"--{FLAG_NAMES[name]} replaces the config's {_derived(setup, other, values[other])}")
            values[other] = None
    if values["mini_batch_prompts"] is not None and values["composition"] == "ranks_first" and "composition" not in flags:
        values["composition"] = "canonical"
        overrides.append("composition canonical: mini-batches counted in prompts are cut before the rank shards")
    if values["rank_shuffle_seed"] is not None and values["composition"] != "ranks_first":
        overrides.append(
            f"composition {values['composition']}: the config's per-rank shuffle ({_derived(setup, 'rank_shuffle_seed', values['rank_shuffle_seed'])}) "
            "exists only under ranks_first and is dropped"
        )
        values["rank_shuffle_seed"] = None
    if "seed" in flags and values["order"] != "shuffle":
        raise AggscopeError("--seed applies only to --order shuffle; add --order shuffle or drop --seed")
    layout = Layout(**values)
    if modes:
        chosen = tuple(modes)
        if [mode.name for mode in resolve_modes(modes)] != [setup.mode]:
            overrides.append(f"--mode {', '.join(modes)} (command line) replaces the config's mode {setup.mode}")
    else:
        others = [m.name for m in default_modes(has_groups=has_groups, max_seq_len=layout.max_seq_len) if m.name != setup.mode]
        chosen = (setup.mode, *others)
    not_exact = list(setup.not_exact)
    if setup.trainer == "verl" and input_format == "verl" and (layout.dp_size > 1 or _several_mini_batches(setup)):
        not_exact.append(
            "the input is verl's rollout_data_dir dump, which verl sorts by uid: the order its actor trained in (after "
            "balance_batch) is lost, so which rows share a rank, mini-batch or micro-batch is not the run's; token-mean "
            "weights with several mini-batches and the split findings are estimates (log the batch with aggscope.log_batch "
            "right before update_actor for the exact order)"
        )
    return AppliedSetup(setup, layout, chosen, tuple(overrides), tuple(not_exact))


def _several_mini_batches(setup: TrainerSetup) -> bool:
    rows, mini = setup.step_rows, setup.layout.mini_batch_size
    return rows is None or (mini is not None and rows > mini)


def _derived(setup: TrainerSetup, name: str, value: Any) -> str:
    derivation = setup.derivation(name)
    return derivation.line if derivation is not None else f"{FLAG_NAMES[name]} {value}"


def _arithmetic(setup: TrainerSetup, name: str) -> str:
    derivation = setup.derivation(name)
    return derivation.arithmetic if derivation is not None else "default"
