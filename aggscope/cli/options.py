"""Options shared by the commands, each defined once.

Commands take the input (``PATH``, ``--col``) and the layout options through the decorators
below, which add those parameters to the command and hand it one ``InputSpec`` or ``Layout``.
Nothing here imports torch, pandas or pyarrow, so ``aggscope --help`` stays fast.
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from aggscope.cli.params import COMPARE_CONFIG_PARAMS, CONFIG_PARAMS, ENGINE_PARAMS, INPUT_PARAMS, LAYOUT_PARAMS

if TYPE_CHECKING:
    from aggscope.io.reader import Rollouts


Modes = Annotated[
    Optional[list[str]],
    typer.Option(
        "--mode",
        "-m",
        metavar="MODE",
        help="Aggregation mode, canonical name or a framework's alias (repeatable). Default: every mode that applies.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]


@dataclass(frozen=True)
class InputSpec:
    """Where the rollout batches come from and how to read them, as given on the command line."""

    path: Optional[str]
    columns: dict[str, str] = field(default_factory=dict)
    format: Optional[str] = None
    reward_col: Optional[str] = None
    advantage: Optional[str] = None
    tokenizer: Optional[str] = None
    trust_pickle: bool = False
    eos_trained: Optional[bool] = None
    max_completion_length: Optional[int] = None
    use_dump_weights: bool = False
    tool_mask: Optional[bool] = None

    def refuse_dump_weights(self, command: str, why: str) -> None:
        """A one-line error where ``command`` cannot take the dump's per-token weights in (``why``)."""
        if self.use_dump_weights:
            from aggscope.errors import AggscopeError

            raise AggscopeError(f"--use-dump-weights: {command} {why}; use it with weights or check")

    def open(self) -> "Rollouts":
        """Open the rollouts (imports the loading machinery only now)."""
        from aggscope.cli.text import terminal_safe
        from aggscope.io.open import open_rollouts, trusted_pickle_file

        if self.trust_pickle:
            file = trusted_pickle_file(self.path)
            typer.echo(
                f"aggscope: warning: --trust-pickle: unpickling {terminal_safe(file)} fully, which runs any code it names",
                err=True,
            )
        return open_rollouts(
            self.path,
            columns=self.columns,
            format=self.format,
            reward_col=self.reward_col,
            advantage=self.advantage,
            tokenizer=self.tokenizer,
            trust_pickle=self.trust_pickle,
            eos_trained=self.eos_trained,
            max_completion_length=self.max_completion_length,
            use_dump_weights=self.use_dump_weights,
            tool_mask=self.tool_mask,
        )


def _inject(
    params: list[inspect.Parameter], target: str, build: Callable[..., Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace the command's ``target`` parameter by ``params``; call ``build`` on them at run time."""
    names = [p.name for p in params]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        kept = [p for p in signature.parameters.values() if p.name != target]
        positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keyword = [p for p in params if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
        kept_positional = [p for p in kept if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        kept_keyword = [p for p in kept if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            built = build(**{name: kwargs.pop(name) for name in names})
            return command(*args, **{target: built}, **kwargs)

        ordered = positional + kept_positional + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept_keyword] + keyword
        wrapper.__signature__ = signature.replace(parameters=ordered)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _build_input(
    path: Optional[str],
    col: Optional[list[str]],
    format: Optional[str],
    reward_col: Optional[str],
    advantage: Optional[str],
    tokenizer: Optional[Path],
    trust_pickle: bool,
    eos_trained: Optional[bool] = None,
    max_completion_length: Optional[int] = None,
    use_dump_weights: bool = False,
    tool_mask: Optional[bool] = None,
) -> InputSpec:
    from aggscope.io.columns import parse_column_overrides
    from aggscope.io.paths import refuse_missing

    if path is not None:
        refuse_missing(str(path))
    return InputSpec(
        str(path) if path is not None else None,
        parse_column_overrides(col or []),
        format=format,
        reward_col=reward_col,
        advantage=advantage,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        trust_pickle=trust_pickle,
        eos_trained=eos_trained,
        max_completion_length=max_completion_length,
        use_dump_weights=use_dump_weights,
        tool_mask=tool_mask,
    )


@dataclass(frozen=True)
class ConfigSpec:
    """A trainer config as given on the command line (read only when a command needs it).

    Attributes:
        logged: the config file a trainer integration wrote into the input's log folder, where it is
            the one used (the input is then in the trainer's own order: ``load_setup(logged=True)``).
        picked: True when ``logged`` was picked up from the folder, not given with ``--config``.
        unused_logged: the log folder's config file, where ``--config`` named another.
    """

    paths: tuple[str, ...]
    trainer: Optional[str]
    sets: tuple[str, ...]
    logged: Optional[str] = None
    picked: bool = False
    unused_logged: Optional[str] = None

    def load(self, input_format: Optional[str] = None) -> Any:
        from aggscope.presets import load_setup

        return load_setup(
            self.paths, trainer=self.trainer, sets=self.sets, input_format=input_format, logged=self.logged is not None
        )

    def source_lines(self) -> list[str]:
        """Where the config came from, when the input's log folder holds one."""
        from aggscope.presets.files import display_path

        if self.picked and self.logged is not None:
            return [
                f"{display_path(self.logged)}, written into the log folder by aggscope's trainer integration, is used as "
                "--config (give --config FILE to use another)"
            ]
        if self.unused_logged is not None:
            return [f"the log folder's {Path(self.unused_logged).name} is not used: --config {', '.join(self.paths)} given"]
        return []


@dataclass(frozen=True)
class FlagLayout:
    """Layout flags without a trainer config: the layout they give, and the flags given explicitly
    (which win over a config the input's log folder holds, as over ``--config``)."""

    layout: Any
    flags: dict[str, Any]


@dataclass(frozen=True)
class ConfiguredLayout:
    """Layout flags given beside a trainer config: the config's layout with these flags winning."""

    flags: dict[str, Any]
    config: ConfigSpec
    candidates: tuple[str, ...] = ()  # compare's --to-config


def _build_config(config: Optional[list[str]], trainer: Optional[str], set_values: Optional[list[str]]) -> Optional[ConfigSpec]:
    if not config and trainer is None and not set_values:
        return None
    return ConfigSpec(tuple(config or ()), trainer, tuple(set_values or ()))


def _build_layout(
    *,
    seed_for_specs: bool = False,
    config: Optional[list[str]] = None,
    trainer: Optional[str] = None,
    set_values: Optional[list[str]] = None,
    from_config: Optional[str] = None,
    to_config: Optional[list[str]] = None,
    **values: Any,
) -> Any:
    """The layout of the options; ``seed_for_specs``: a ``--seed`` may serve SPECs that shuffle
    (``compare`` checks it once the SPECs are known). With a trainer config, a ``ConfiguredLayout``
    that ``open_configured`` resolves."""
    from aggscope.core.layout import Layout
    from aggscope.errors import AggscopeError

    if from_config is not None or to_config:
        if config:
            raise AggscopeError("give --config or --from-config, not both (--from-config is the base of compare)")
        if from_config is None:
            raise AggscopeError("--to-config needs --from-config: the config you have, to compare against")
        config = [from_config]
    spec = _build_config(config, trainer, set_values)
    if spec is not None:
        flags = {name: value for name, value in values.items() if value is not None}
        return ConfiguredLayout(flags, spec, tuple(to_config or ()))
    flags = {name: value for name, value in values.items() if value is not None}
    defaults = {"dp_size": 1, "order": "logged", "composition": "canonical", "prompt_tokens": 0, "passes": 1}
    values = {**values, **{name: value for name, value in defaults.items() if values[name] is None}}
    if values["seed"] is None:
        values["seed"] = 0
    elif values["order"].strip().lower() != "shuffle" and not seed_for_specs:
        raise AggscopeError("--seed applies only to --order shuffle; add --order shuffle or drop --seed")
    return FlagLayout(Layout(**values), flags)


def with_logged_config(input_spec: InputSpec, layout: Any) -> Any:
    """The layout options with the config a trainer integration wrote into the input's log folder.

    Without ``--config`` that file is the config (``--trainer``, ``--set`` and the layout flags still
    apply over it); with ``--config`` the named files are used and the output says the folder's is
    not. Without such a file, the options unchanged. Calling it twice gives the same result.
    """
    import dataclasses

    from aggscope.io.logged_config import logged_config

    found = logged_config(input_spec.path)
    if found is None:
        return layout
    file, trainer = found
    if isinstance(layout, FlagLayout):
        return ConfiguredLayout(layout.flags, ConfigSpec((file,), trainer, (), logged=file, picked=True))
    spec = layout.config
    if not spec.paths or spec.picked:  # --trainer or --set alone: they start from the log folder's config
        spec = dataclasses.replace(spec, paths=(file,), trainer=spec.trainer or trainer, logged=file, picked=True)
    elif any(Path(path).resolve() == Path(file).resolve() for path in spec.paths):
        spec = dataclasses.replace(spec, logged=file)
    else:
        spec = dataclasses.replace(spec, unused_logged=file)
    return dataclasses.replace(layout, config=spec)


def open_configured(input_spec: InputSpec, layout: Any, modes: Optional[list[str]]) -> tuple[Any, Any, Optional[list[str]], Any]:
    """Open the input and settle the layout and modes: ``(rollouts, layout, modes, applied)``.

    Without a trainer config this is ``input_spec.open()`` and the arguments unchanged (``applied`` is
    None). With one, the config's layout with the explicit layout flags winning, the trainer's mode
    first (or the modes named), and the config's advantage estimator where the input's advantages
    are rebuilt (verl's dump) and no ``--advantage`` was given.
    """
    if modes:
        from aggscope.core.modes import resolve_mode_option

        resolve_mode_option(modes)  # an unknown mode is a usage error: say so before opening the input
    layout = with_logged_config(input_spec, layout)
    if isinstance(layout, FlagLayout):
        layout = layout.layout
    if not isinstance(layout, ConfiguredLayout):
        rollouts = input_spec.open()
        if not rollouts.recorded_layout:  # most inputs: the presets need not load
            return rollouts, layout, modes, None
        from aggscope.presets.recorded import RecordedLayout, with_recorded_layout

        layout, line = with_recorded_layout(rollouts, layout)
        return rollouts, layout, modes, None if line is None else RecordedLayout(layout, line)
    import dataclasses

    from aggscope.presets.apply import apply_setup

    input_format = _input_format(input_spec)
    setup = layout.config.load(input_format)
    if input_spec.advantage is None and input_format == "verl" and setup.estimator is not None:
        input_spec = dataclasses.replace(input_spec, advantage=setup.estimator)
    if input_spec.max_completion_length is None and input_format == "trl" and setup.trainer == "trl":
        # TRL's log holds text: a completion as long as the config's max_completion_length was cut
        # there and has no end token to count (``--max-completion-length`` still wins)
        input_spec = dataclasses.replace(input_spec, max_completion_length=setup.response_cap)
    rollouts = input_spec.open()
    applied = apply_setup(setup, layout.flags, modes, has_groups=rollouts.has_groups, input_format=input_format)
    source = layout.config.source_lines()
    if source:
        applied = dataclasses.replace(applied, overrides=(*source, *applied.overrides))
    from aggscope.presets.recorded import with_recorded_layout

    _, line = with_recorded_layout(rollouts, applied.layout, set_by="the config")  # the config wins; say what the dump held
    if line is not None:
        applied = dataclasses.replace(applied, overrides=(*applied.overrides, line))
    return rollouts, applied.layout, list(applied.modes), applied


def _input_format(input_spec: InputSpec) -> Optional[str]:
    from aggscope.errors import AggscopeError
    from aggscope.io.open import detect_format, resolve_format

    if input_spec.format is not None:
        return str(resolve_format(input_spec.format))
    if input_spec.path is None:
        return "parquet"
    try:
        return str(detect_format(input_spec.path))
    except AggscopeError:
        return None  # opening the input says what is wrong with it


def _build_engine(engine: str, address: Optional[str]) -> Any:
    from aggscope.analysis.runner import open_engine

    return open_engine(engine, address)


input_options = _inject(INPUT_PARAMS, "input_spec", _build_input)
engine_options = _inject(ENGINE_PARAMS, "engine", _build_engine)
layout_options = _inject(LAYOUT_PARAMS + CONFIG_PARAMS, "layout", _build_layout)
spec_layout_options = _inject(
    LAYOUT_PARAMS + CONFIG_PARAMS + COMPARE_CONFIG_PARAMS,
    "layout",
    functools.partial(_build_layout, seed_for_specs=True),
)
config_options = _inject(CONFIG_PARAMS, "config", _build_config)
