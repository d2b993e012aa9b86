"""What a trainer preset derives from a config, with where every value came from.

``TrainerSetup`` is the result of one preset: the layout and mode it derives, each value with the
config keys and the arithmetic behind it (``Derivation``), the keys it read but does not model
(``Unmodelled``: they change the loss, not the weights aggscope computes, or change them in a way
aggscope does not model yet), and what keeps a number from being exact. ``ConfigReader`` is how a
preset reads keys: typed, with the trainer's default when a key is absent, and a one-line error
naming the file and key when a value is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aggscope.core.layout import Layout
from aggscope.errors import AggscopeError
from aggscope.presets.files import SET_SOURCE, ConfigFiles, display_path

FLAG_NAMES = {
    "mini_batch_size": "mini-batch-size",
    "mini_batch_prompts": "mini-batch-prompts",
    "micro_batch_size": "micro-batch-size",
    "dp_size": "dp-size",
    "max_seq_len": "max-seq-len",
    "order": "order",
    "seed": "seed",
    "composition": "composition",
    "micro_batch_tokens": "micro-batch-tokens",
    "prompt_tokens": "prompt-tokens",
    "passes": "passes",
    "rank_shuffle_seed": "rank-shuffle-seed",
    "mode": "mode",
    "advantage": "advantage",
    "response_cap": "response cap",
    "step_rows": "rows per step",
    "updates": "updates per step",
}
_MISSING = object()


@dataclass(frozen=True)
class Derivation:
    """One derived value: ``mini-batch-size 512 = ppo_mini_batch_size 32 x rollout.n 16``.

    Attributes:
        name: the layout field (``mini_batch_size``, ...), ``mode``, ``advantage`` or ``response_cap``.
        value: the value aggscope uses.
        keys: the config keys it came from (full dotted names).
        arithmetic: how, in the config's own words.
    """

    name: str
    value: Any
    keys: tuple[str, ...]
    arithmetic: str

    @property
    def line(self) -> str:
        return f"{FLAG_NAMES.get(self.name, self.name)} {_show(self.value)} = {self.arithmetic}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keys": list(self.keys), "line": self.line}


@dataclass(frozen=True)
class Unmodelled:
    """A key read but not modelled, and what it does that aggscope leaves out."""

    key: str
    value: Any
    effect: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Refusal:
    """A config whose numbers aggscope cannot compute exactly: an error for the commands that
    compute weights unless one of ``fields`` (layout fields or ``mode``) is given explicitly on the
    command line (then the numbers are those of the layout the user chose, and the output says so)."""

    fields: frozenset[str]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"fields": sorted(self.fields), "message": self.message}


@dataclass(frozen=True)
class TrainerSetup:
    """What a trainer's config says about the weights of the steps it trained.

    Attributes:
        trainer: ``verl``, ``skyrl``, ``trl``, ``openrlhf``, ``nemo-rl`` or ``prime-rl``.
        release: the release whose code the preset follows (``verl 0.9.1``).
        files: the config files read (``--set`` overrides are in the derivations' keys).
        layout: the layout the config gives.
        mode: the canonical aggregation mode the trainer computes.
        estimator: the advantage estimator, where aggscope rebuilds advantages (``grpo``, ``dr_grpo``,
            ``rloo``), else None.
        response_cap: the configured maximum response length, or None.
        derivations: every derived value with its keys and arithmetic.
        unmodelled: keys read but not modelled, with what they do.
        checked: keys read whose values need no modelling at these settings (``ppo_epochs 1``).
        other_keys: every other key of the config (no effect on the weights).
        notes: what the reader should know (defaults applied, assumptions).
        not_exact: numbers that are estimates under this config, and why.
        refusals: what aggscope cannot compute under this config (see ``Refusal``).
        values: the config's flat ``{key: value}`` as read (for comparing two configs).
    """

    trainer: str
    release: str
    files: tuple[str, ...]
    layout: Layout
    mode: str
    estimator: str | None
    response_cap: int | None
    derivations: tuple[Derivation, ...]
    unmodelled: tuple[Unmodelled, ...] = ()
    checked: tuple[tuple[str, Any], ...] = ()
    other_keys: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    not_exact: tuple[str, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    values: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def derivation(self, name: str) -> Derivation | None:
        return next((d for d in self.derivations if d.name == name), None)

    @property
    def step_rows(self) -> int | None:
        """The rows of one training step the config implies, where it says."""
        derivation = self.derivation("step_rows")
        return None if derivation is None else derivation.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "trainer": self.trainer,
            "release": self.release,
            "files": list(self.files),
            "layout": self.layout.to_dict(),
            "mode": self.mode,
            "estimator": self.estimator,
            "response_cap": self.response_cap,
            "derivations": [d.to_dict() for d in self.derivations],
            "unmodelled": [u.to_dict() for u in self.unmodelled],
            "checked": dict(self.checked),
            "other_keys": list(self.other_keys),
            "notes": list(self.notes),
            "not_exact": list(self.not_exact),
            "refusals": [r.to_dict() for r in self.refusals],
        }


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        return str(value)
    return str(value)


def short(key: str) -> str:
    """A key as the arithmetic names it: its last part, two parts when that is short (``rollout.n``)."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts) > 1 and len(parts[-1]) <= 2 else parts[-1]


@dataclass
class ConfigReader:
    """Typed access to a config's keys for one preset, recording what was read.

    Attributes:
        config: the flat config.
        trainer: the preset's name, for messages.
        known: keys the preset knows without modelling them (their effect is listed by the preset).
        logged: the input is the log an aggscope trainer integration wrote beside this config: its
            rows are in the order the trainer trained them, one file per optimizer step it logged.
    """

    config: ConfigFiles
    trainer: str
    known: dict[str, str] = field(default_factory=dict)
    logged: bool = False
    read: dict[str, Any] = field(default_factory=dict)
    defaulted: set[str] = field(default_factory=set)

    # ---- reading -------------------------------------------------------------------------------
    def value(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.config.values:
            value = self.config.values[key]
        elif any(name.startswith(key + ".") for name in self.config.values):  # keys under it: a mapping
            raise self.error(key, "is a mapping of keys where one value belongs")
        elif default is _MISSING:
            raise self.error(key, "is missing; set it in the config or with --set")
        else:
            value = default
            self.defaulted.add(key)
        self.read[key] = value
        return value

    def has(self, key: str) -> bool:
        return key in self.config.values

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = 1, nullable: bool = False) -> Any:
        value = self.value(key, default)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, nullable: bool = False) -> Any:
        value = self.value(key, default)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {value!r}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.value(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: Any, choices: Sequence[Any], *, nullable: bool = False) -> Any:
        value = self.value(key, default)
        if value is None and nullable:
            return None
        if value not in choices:
            raise self.error(key, f"is {value!r}; {self.trainer} accepts {', '.join(map(repr, choices))}")
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self.value(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(key, f"must be text, got {value!r}")
        return value

    # ---- telling ------------------------------------------------------------------------------
    def where(self, key: str) -> str:
        source = self.config.where(key)
        return source if source == SET_SOURCE else display_path(source)

    def error(self, key: str, message: str) -> AggscopeError:
        return AggscopeError(f"{self.where(key)}: {key} {message}")

    def term(self, key: str) -> str:
        """``ppo_mini_batch_size 32`` (``(default)`` when the config does not set it)."""
        default = " (default)" if key in self.defaulted else ""
        return f"{short(key)} {_show(self.read[key])}{default}"

    def derive(self, name: str, value: Any, keys: Iterable[str], arithmetic: str | None = None) -> Derivation:
        keys = tuple(keys)
        if arithmetic is None:
            numbers = all(isinstance(self.read.get(k), int) and not isinstance(self.read.get(k), bool) for k in keys)
            arithmetic = (" x " if numbers else ", ").join(self.term(k) for k in keys)
        return Derivation(name, value, keys, arithmetic)

    # ---- what was left ------------------------------------------------------------------------
    def leftovers(self, modelled: Iterable[str]) -> tuple[list[tuple[str, Any]], list[Unmodelled], list[str]]:
        """Every config key not behind a derived value, in three kinds: read and checked (their
        values need no modelling here), known but not modelled (with what they do), and the rest
        (no effect on the weights). A key one or two letters away from a key the preset knows is
        an error: the trainer would not read it either."""
        modelled = set(modelled)
        vocabulary = set(self.read) | set(self.known)
        checked = sorted((key, value) for key, value in self.read.items() if key not in modelled and key in self.config.values)
        unmodelled = [
            Unmodelled(key, self.config.values[key], effect)
            for key, effect in self.known.items()
            if key in self.config.values and key not in self.read
        ]
        others = []
        for key in self.config.values:
            if key in vocabulary:
                continue
            self._check_spelling(key, vocabulary)
            others.append(key)
        return checked, unmodelled, sorted(others)

    def _check_spelling(self, key: str, vocabulary: set[str]) -> None:
        parent, _, leaf = key.rpartition(".")
        for known in sorted(vocabulary):
            known_parent, _, known_leaf = known.rpartition(".")
            if known_parent == parent and len(leaf) >= 6 and _within_two_edits(leaf, known_leaf):
                raise AggscopeError(
                    f"{self.where(key)}: unknown key {key} (did you mean {known}?); {self.trainer} would not read it, "
                    "so its value would be ignored"
                )
        if self.config.origin.get(key) == SET_SOURCE and key not in self.config.file_keys and key not in self.config.added:
            raise AggscopeError(
                f"--set {key}: not a key of this {self.trainer} config nor one aggscope reads; check the spelling "
                f"(+{key}=VALUE adds a new key, as Hydra does)"
            )


def _within_two_edits(a: str, b: str) -> bool:
    """Levenshtein distance of at most 2 (a misspelling, not another word)."""
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        if min(current) > 2:
            return False
        previous = current
    return previous[-1] <= 2


LAYOUT_FIELDS = (
    "mini_batch_size",
    "mini_batch_prompts",
    "micro_batch_size",
    "dp_size",
    "max_seq_len",
    "order",
    "seed",
    "composition",
    "micro_batch_tokens",
    "prompt_tokens",
    "passes",
    "rank_shuffle_seed",
)


@dataclass
class Draft:
    """A setup being derived: each preset sets values with their keys, then ``finish``es it."""

    reader: ConfigReader
    release: str
    derivations: list[Derivation] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    not_exact: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def set(self, name: str, value: Any, keys: Iterable[str], arithmetic: str | None = None) -> Any:
        self.values[name] = value
        self.derivations.append(self.reader.derive(name, value, keys, arithmetic))
        return value

    def refuse(self, message: str, *fields: str) -> None:
        """An error for the commands that compute weights, unless one of ``fields`` is given explicitly."""
        self.refusals.append(Refusal(frozenset(fields), message))

    def finish(self) -> TrainerSetup:
        checked, unmodelled, others = self.reader.leftovers(key for d in self.derivations for key in d.keys)
        layout_values = {name: self.values[name] for name in LAYOUT_FIELDS if name in self.values}
        try:
            layout = Layout(**layout_values)
        except AggscopeError as exc:  # pragma: no cover - the presets check their values first
            raise AggscopeError(f"{self.reader.trainer} config: {exc.message}") from None
        missing = self.reader.config.missing_defaults
        notes = list(self.notes)
        if missing:
            notes.insert(
                0,
                f"defaults: {', '.join(missing)} named no file next to the config: keys they would set take "
                f"{self.release}'s defaults as aggscope knows them (point --config at the run's composed "
                ".hydra/config.yaml to read what actually ran)",
            )
        return TrainerSetup(
            trainer=self.reader.trainer,
            release=self.release,
            files=tuple(display_path(f) for f in self.reader.config.files),
            layout=layout,
            mode=self.values["mode"],
            estimator=self.values.get("advantage"),
            response_cap=self.values.get("response_cap"),
            derivations=tuple(self.derivations),
            unmodelled=tuple(unmodelled),
            checked=tuple(checked),
            other_keys=tuple(others),
            notes=tuple(notes),
            not_exact=tuple(self.not_exact),
            refusals=tuple(self.refusals),
            values=dict(self.reader.config.values),
        )
