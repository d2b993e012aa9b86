"""What to compare: an aggregation mode at a trainer layout, written as ``MODE[,key=value,...]``.

A SPEC names a mode (any canonical name or framework alias) and optionally overrides layout
options; its keys are the layout option names without the dashes (``mini-batch-size``,
``mini-batch-prompts``, ``micro-batch-size``, ``dp-size``, ``max-seq-len``, ``order``, ``seed``,
``composition``;
underscores are accepted too). Keys a SPEC leaves out take the layout given on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, check_applicable, resolve_mode
from aggscope.errors import AggscopeError, did_you_mean

SPEC_KEYS = tuple(f.name.replace("_", "-") for f in fields(Layout))
_TEXT_KEYS = frozenset({"order", "composition"})
_OPTIONAL_KEYS = frozenset(
    {"mini-batch-size", "mini-batch-prompts", "micro-batch-size", "max-seq-len", "micro-batch-tokens", "rank-shuffle-seed"}
)
_MINI_BATCH_KEYS = ("mini-batch-size", "mini-batch-prompts")


@dataclass(frozen=True)
class Spec:
    """One candidate configuration: a mode at a layout.

    Attributes:
        mode: the aggregation mode.
        layout: the full layout (the command line's, with the SPEC's overrides applied).
        overrides: the ``(key, value)`` pairs the SPEC set, keys in their dashed form.
    """

    mode: Mode
    layout: Layout
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The canonical way to write this SPEC, e.g. ``prompt_mean,mini-batch-prompts=16``."""
        return ",".join([self.mode.name, *(f"{key}={value}" for key, value in self.overrides)])


def parse_spec(text: str, base: Layout) -> Spec:
    """Parse ``MODE[,key=value,...]`` against the command line's layout.

    Raises:
        AggscopeError: one line naming the SPEC and the bad mode, key or value.
    """
    if len(text) > 200:  # messages quote the SPEC: a 5,000-digit value would make the line unreadable
        raise AggscopeError(f"SPEC {text[:40]!r}...: {len(text):,} characters long; a SPEC is a mode and a few key=value pairs")
    parts = [part.strip() for part in text.split(",")]
    if not parts[0]:
        raise AggscopeError(f"SPEC {text!r}: starts with no mode; write MODE[,key=value,...], e.g. prompt_mean,dp-size=4")
    try:
        mode = resolve_mode(parts[0])
    except AggscopeError as exc:
        raise AggscopeError(f"SPEC {text!r}: {exc.message}") from None
    overrides: dict[str, str] = {}
    changes: dict[str, object] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("_", "-")
        value = value.strip()
        if not sep or not key or not value:
            raise AggscopeError(f"SPEC {text!r}: {part!r} is not key=value; valid keys: {', '.join(SPEC_KEYS)}")
        if key not in SPEC_KEYS:
            raise AggscopeError(
                f"SPEC {text!r}: unknown key {key!r}{did_you_mean(key, SPEC_KEYS)}; valid keys: {', '.join(SPEC_KEYS)}"
            )
        if key in overrides:
            raise AggscopeError(f"SPEC {text!r}: key {key!r} is given twice")
        overrides[key] = value
        changes[key.replace("-", "_")] = _value(text, key, value)
    if all(key in overrides for key in _MINI_BATCH_KEYS):
        raise AggscopeError(f"SPEC {text!r}: give mini-batch-size or mini-batch-prompts, not both")
    # A SPEC's mini-batch setting replaces the command line's, whichever way that one counted.
    for key, other in (_MINI_BATCH_KEYS, _MINI_BATCH_KEYS[::-1]):
        if key in overrides:
            changes.setdefault(other.replace("-", "_"), None)
    try:
        layout = base.replace(**changes)
    except AggscopeError as exc:
        raise AggscopeError(f"SPEC {text!r}: {exc.message}") from None
    if layout.order != "shuffle":
        if "seed" in overrides:
            raise AggscopeError(f"SPEC {text!r}: seed applies only to order=shuffle")
        layout = layout.replace(seed=0)  # a seed means nothing to other orders: layouts compare equal without it
    return Spec(mode, layout, tuple(overrides.items()))


def _value(text: str, key: str, value: str) -> object:
    if key in _TEXT_KEYS:
        return value.lower()
    if key in _OPTIONAL_KEYS and value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise AggscopeError(f"SPEC {text!r}: {key} must be a whole number, got {value!r}") from None


def parse_specs(base_text: str, candidate_texts: Sequence[str], layout: Layout) -> list[Spec]:
    """The base SPEC followed by the candidates; rejects a candidate that repeats an earlier one,
    and a command-line seed (other than the default 0) that no SPEC shuffles with."""
    if not candidate_texts:
        raise AggscopeError("give at least one --to SPEC to compare against --from")
    specs: list[Spec] = []
    for text in (base_text, *candidate_texts):
        spec = parse_spec(text, layout)
        for earlier in specs:
            if (earlier.mode.name, earlier.layout) == (spec.mode.name, spec.layout):
                raise AggscopeError(f"SPEC {text!r}: the same mode and layout as {earlier.label!r}; compare something different")
        specs.append(spec)
    if layout.seed != 0 and not any(spec.layout.order == "shuffle" for spec in specs):
        raise AggscopeError("--seed applies only to shuffled layouts: give --order shuffle or order=shuffle in a SPEC")
    return specs


def config_spec(mode: str, layout: Layout, label: str) -> Spec:
    """The SPEC of a trainer config (``compare --from-config / --to-config``): its mode at its layout,
    labelled ``MODE,config=LABEL``."""
    return Spec(resolve_mode(mode), layout, (("config", label),))


def check_specs(specs: Sequence[Spec], *, has_groups: bool, source: str) -> None:
    """Fail early, before any step is read, when a SPEC cannot be computed on this input."""
    for spec in specs:
        try:
            check_applicable(spec.mode, has_groups=has_groups, max_seq_len=spec.layout.max_seq_len, source=source)
            if spec.layout.needs_groups and not has_groups:
                what = "--order grouped" if spec.layout.order == "grouped" else "mini-batch-prompts"
                raise AggscopeError(f"{source}: {what} needs a uid column (set one with --col uid=NAME)")
        except AggscopeError as exc:
            raise AggscopeError(f"SPEC {spec.label!r}: {exc.message}") from None


def describe_layout(layout: Layout) -> str:
    """The layout in a few words, e.g. ``mini-batches of 64 sequences · 4 ranks · micro-batches of 8``."""
    if layout.mini_batch_size is not None:
        mini = f"mini-batches of {layout.mini_batch_size} sequences"
    elif layout.mini_batch_prompts is not None:
        mini = f"mini-batches of {layout.mini_batch_prompts} prompts"
    else:
        mini = "one mini-batch per step"
    parts = [mini, f"{layout.dp_size} rank{'s' * (layout.dp_size != 1)}"]
    parts.append(f"micro-batches of {layout.micro_batch_size}" if layout.micro_batch_size is not None else "no micro-batching")
    if layout.max_seq_len is not None:
        parts.append(f"H = {layout.max_seq_len}")
    parts.append(f"{layout.order} order" + (f" (seed {layout.seed})" if layout.order == "shuffle" else ""))
    if layout.composition != "canonical":
        parts.append("rank shards first (verl)")
    return " · ".join(parts)
