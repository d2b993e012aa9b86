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

if TYPE_CHECKING:
    from aggscope.io.reader import Rollouts

LAYOUT_PANEL = "Layout (how the trainer splits a step)"
INPUT_PANEL = "Input"
CONFIG_PANEL = "Trainer config (the layout and mode your run used)"

Modes = Annotated[
    Optional[list[str]],
    typer.Option(
        "--mode",
        "-m",
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

    def open(self) -> "Rollouts":
        """Open the rollouts (imports the loading machinery only now)."""
        from aggscope.cli.render import terminal_safe
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
        )


def _param(name: str, annotation: Any, default: Any, kind: Any = inspect.Parameter.KEYWORD_ONLY) -> inspect.Parameter:
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


_INPUT_PARAMS = [
    _param(
        "path",
        Annotated[
            # A string, not a Path: Path would fold the '//' of an object-storage URI (s3://...).
            Optional[str],
            typer.Argument(
                help="Rollout batches: a file, directory or glob (canonical Parquet or a trainer's dump, see --format), "
                "local or a URI such as s3://bucket/run/. "
                "Default: the bundled sample.",
                show_default=False,
            ),
        ],
        None,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ),
    _param(
        "col",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--col",
                help="Set a column's role, ROLE=NAME (repeatable), e.g. --col uid=prompt_id. "
                "Roles: uid, uid_text, advantages, loss_mask, reward, response_length, step, sequence.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "format",
        Annotated[
            Optional[str],
            typer.Option(
                "--format",
                help="Input format: parquet, trl, verl, nemo-rl, prime-rl, atropos, slime, skyrl. Default: detected.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "reward_col",
        Annotated[
            Optional[str],
            typer.Option(
                "--reward-col",
                help="Field or column holding the reward, where a dump has several (e.g. a TRL reward function, verl's acc).",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "advantage",
        Annotated[
            Optional[str],
            typer.Option(
                "--advantage",
                help="Rebuild advantages from rewards per prompt group: grpo, dr_grpo or rloo. Default: the dump's own "
                "advantages, grpo where it has none.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "tokenizer",
        Annotated[
            Optional[Path],
            typer.Option(
                "--tokenizer",
                help="Local tokenizer folder to count the tokens of text-only dumps (verl, trl); needs transformers "
                "(pip install 'aggscope\\[tokenizer]'). Default: estimate from the text.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "trust_pickle",
        Annotated[
            bool,
            typer.Option(
                "--trust-pickle",
                help="Unpickle a .pkl or .pt dump fully, for a file you trust that the safe loader refuses (it can run "
                "code the file names). Only for a file named as PATH, never a folder or glob.",
                rich_help_panel=INPUT_PANEL,
            ),
        ],
        False,
    ),
]

_LAYOUT_PARAMS = [
    _param(
        "mini_batch_size",
        Annotated[
            Optional[int],
            typer.Option(
                help="Sequences per optimizer step (default: the whole step).", rich_help_panel=LAYOUT_PANEL, show_default=False
            ),
        ],
        None,
    ),
    _param(
        "mini_batch_prompts",
        Annotated[
            Optional[int],
            typer.Option(
                help="Prompts per optimizer step, counted as SkyRL counts them (runs of equal consecutive uids). "
                "verl's ppo_mini_batch_size is in prompts but slices prompts x n rows: give that as --mini-batch-size.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "micro_batch_size",
        Annotated[
            Optional[int],
            typer.Option(
                help="Sequences per micro-batch per rank (default: the whole rank shard).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "dp_size",
        Annotated[
            Optional[int], typer.Option(help="Data-parallel ranks (default 1).", rich_help_panel=LAYOUT_PANEL, show_default=False)
        ],
        None,
    ),
    _param(
        "max_seq_len",
        Annotated[
            Optional[int],
            typer.Option(
                help="Horizon H of seq_mean_token_sum_norm (Dr. GRPO); enables that mode.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "order",
        Annotated[
            Optional[str],
            typer.Option(
                help="Row order the trainer sees: logged (default), grouped, shuffle or balanced (verl's balance_batch "
                "over --dp-size ranks).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "seed",
        Annotated[
            Optional[int],
            typer.Option(help="Seed of --order shuffle (default 0).", rich_help_panel=LAYOUT_PANEL, show_default=False),
        ],
        None,
    ),
    _param(
        "composition",
        Annotated[
            Optional[str],
            typer.Option(
                help="canonical (default: mini-batches, then rank shards inside each) or ranks_first (verl: rank shards "
                "of the whole step, then mini-batches inside each).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "micro_batch_tokens",
        Annotated[
            Optional[int],
            typer.Option(
                help="Token budget of a micro-batch per rank, instead of --micro-batch-size: verl's use_dynamic_bsz "
                "(ppo_max_token_len_per_gpu x sequence-parallel size), partitioned as verl does.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "prompt_tokens",
        Annotated[
            Optional[int],
            typer.Option(
                help="Prompt tokens to add to every row's length where the split counts lengths (--micro-batch-tokens, "
                "--order balanced); the input holds responses only (default 0).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "passes",
        Annotated[
            Optional[int],
            typer.Option(
                help="Times every mini-batch is trained with the same split (verl ppo_epochs, TRL num_iterations); "
                "weights are summed over the passes (default 1).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

_CONFIG_PARAMS = [
    _param(
        "config",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--config",
                help="The trainer's config (repeatable, later files win): verl/SkyRL/NeMo-RL YAML (a run's .hydra/config.yaml), "
                "TRL GRPOConfig JSON or YAML, prime-rl TOML, or a saved command line (.sh, .txt: OpenRLHF). Sets the layout "
                "and the mode; layout flags still win.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "trainer",
        Annotated[
            Optional[str],
            typer.Option(
                "--trainer",
                help="verl, skyrl, trl, openrlhf, nemo-rl or prime-rl. Default: inferred from the config's keys or the dump.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "set_values",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--set",
                help="Override a config key in the trainer's spelling, KEY=VALUE (repeatable), e.g. "
                "--set actor_rollout_ref.actor.ppo_mini_batch_size=64.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

_COMPARE_CONFIG_PARAMS = [
    _param(
        "from_config",
        Annotated[
            Optional[str],
            typer.Option(
                "--from-config",
                help="compare: the trainer config you have, as the base (with --trainer and --set like --config).",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    _param(
        "to_config",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--to-config",
                help="compare: a config to compare against it (repeatable): FILE, FILE,KEY=VALUE,... or ,KEY=VALUE,... "
                "(the --from-config with these changes).",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

ENGINE_PANEL = "Engine (where the per-step work runs)"
_ENGINE_PARAMS = [
    _param(
        "engine",
        Annotated[
            str,
            typer.Option(
                help="local (this process, one step at a time) or ray (one Ray task per step, reading the files on the "
                "workers; needs pip install 'aggscope\\[ray]').",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        "local",
    ),
    _param(
        "address",
        Annotated[
            Optional[str],
            typer.Option(
                help="Ray cluster to use with --engine ray: auto, HOST:PORT or ray://HOST:PORT. Default: a running Ray "
                "(RAY_ADDRESS) or a new local one.",
                rich_help_panel=ENGINE_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]


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
) -> InputSpec:
    from aggscope.io.columns import parse_column_overrides

    return InputSpec(
        str(path) if path is not None else None,
        parse_column_overrides(col or []),
        format=format,
        reward_col=reward_col,
        advantage=advantage,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        trust_pickle=trust_pickle,
    )


@dataclass(frozen=True)
class ConfigSpec:
    """A trainer config as given on the command line (read only when a command needs it)."""

    paths: tuple[str, ...]
    trainer: Optional[str]
    sets: tuple[str, ...]

    def load(self, input_format: Optional[str] = None) -> Any:
        from aggscope.presets import load_setup

        return load_setup(self.paths, trainer=self.trainer, sets=self.sets, input_format=input_format)


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
    defaults = {"dp_size": 1, "order": "logged", "composition": "canonical", "prompt_tokens": 0, "passes": 1}
    values = {**values, **{name: value for name, value in defaults.items() if values[name] is None}}
    if values["seed"] is None:
        values["seed"] = 0
    elif values["order"].strip().lower() != "shuffle" and not seed_for_specs:
        raise AggscopeError("--seed applies only to --order shuffle; add --order shuffle or drop --seed")
    return Layout(**values)


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
    if not isinstance(layout, ConfiguredLayout):
        return input_spec.open(), layout, modes, None
    import dataclasses

    from aggscope.presets.apply import apply_setup

    input_format = _input_format(input_spec)
    setup = layout.config.load(input_format)
    if input_spec.advantage is None and input_format == "verl" and setup.estimator is not None:
        input_spec = dataclasses.replace(input_spec, advantage=setup.estimator)
    rollouts = input_spec.open()
    applied = apply_setup(setup, layout.flags, modes, has_groups=rollouts.has_groups, input_format=input_format)
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


input_options = _inject(_INPUT_PARAMS, "input_spec", _build_input)
engine_options = _inject(_ENGINE_PARAMS, "engine", _build_engine)
layout_options = _inject(_LAYOUT_PARAMS + _CONFIG_PARAMS, "layout", _build_layout)
spec_layout_options = _inject(
    _LAYOUT_PARAMS + _CONFIG_PARAMS + _COMPARE_CONFIG_PARAMS, "layout", functools.partial(_build_layout, seed_for_specs=True)
)
config_options = _inject(_CONFIG_PARAMS, "config", _build_config)
