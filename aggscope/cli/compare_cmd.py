"""``aggscope compare``: what switching mode or layout does, candidates against a base, as a report."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aggscope.cli.app import app
from aggscope.cli.check_options import check_options, with_trainer
from aggscope.cli.config_view import config_notes
from aggscope.cli.options import (
    InputSpec,
    engine_options,
    input_options,
    open_configured,
    spec_layout_options,
    with_logged_config,
)
from aggscope.cli.report_cmd import make_and_write, step_progress
from aggscope.errors import AggscopeError

SPEC_HELP = (
    "MODE[,key=value,...]: a mode (any name or alias) plus layout overrides, keys as the layout options without "
    "dashes: mini-batch-size, mini-batch-prompts, micro-batch-size, dp-size, max-seq-len, order, seed, composition."
)


@app.command(
    epilog="Example: aggscope compare rollouts/ --from token_mean --to prompt_mean,mini-batch-prompts=16,micro-batch-size=4 "
    "--to seq-mean-token-mean -o compare; before changing a config: aggscope compare rollouts/ --from-config old.yaml "
    "--to-config new.yaml --to-config ,actor_rollout_ref.actor.ppo_mini_batch_size=64 -o compare"
)
@input_options
@spec_layout_options
@engine_options
def compare(
    input_spec: InputSpec,
    layout: Any,
    engine: Any,
    *,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Directory to write the report into (created if missing).")
    ] = Path("compare"),
    base: Annotated[
        Optional[str],
        typer.Option(
            "--from", metavar="SPEC", help=f"The configuration you have (or --from-config). {SPEC_HELP}", show_default=False
        ),
    ] = None,
    candidates: Annotated[
        Optional[list[str]],
        typer.Option(
            "--to", metavar="SPEC", help="A configuration to compare against it (repeatable); same form.", show_default=False
        ),
    ] = None,
) -> None:
    """Compare candidate modes and layouts against a base: where the gradient mass moves, as a report."""
    from aggscope.analysis.specs import parse_specs
    from aggscope.present.outputs import check_output_directory

    input_spec.refuse_dump_weights(
        "compare", "draws and compares one weight per sequence, and the dump's per-token weights vary inside a sequence"
    )
    configured = with_logged_config(input_spec, layout)  # the log folder's config is the base, as --from-config
    rollouts, layout, _, config = open_configured(input_spec, configured, None)
    changes: list[str] = []
    if getattr(configured, "candidates", ()) or (getattr(config, "setup", None) is not None and base is None):
        specs, changes = config_specs(configured, config, candidates or [], rollouts)
    elif base is None:
        raise AggscopeError("give --from SPEC (or --from-config FILE): the configuration you have")
    else:
        specs = parse_specs(base, candidates or [], layout)
    check_output_directory(out)
    from aggscope.present.report import compare as compare_report

    notes = [*changes, *rollouts.notes, *config_notes(config)]
    make_and_write(
        lambda: compare_report(
            rollouts,
            specs,
            engine=engine,
            progress=step_progress(rollouts, "compare"),
            notes=notes,
            check_options=with_trainer(check_options(None, None), config, rollouts.format),
        ),
        out,
    )


def config_specs(configured: Any, applied: Any, spec_texts: list[str], rollouts: Any) -> tuple[list[Any], list[str]]:
    """The SPECs of ``--from-config`` and each ``--to-config`` (the same flags, ``--trainer`` and ``--set``
    apply to every config), then the ``--to`` SPECs against the base config's layout; and the lines
    saying which keys differ and what each change does."""
    from aggscope.analysis.specs import config_spec, parse_spec
    from aggscope.presets import load_setup
    from aggscope.presets.apply import apply_setup
    from aggscope.presets.changes import config_changes, parse_config_choice

    paths = configured.config.paths
    # --trainer (and --set) without a file: the trainer's defaults are the config, named by the trainer
    base_label = Path(paths[-1]).name if paths else applied.setup.trainer
    specs = [config_spec(applied.setup.mode, applied.layout, base_label)]
    changes = []
    for text in configured.candidates:
        choice = parse_config_choice(text, configured.config.paths)
        setup = load_setup(choice.paths, trainer=configured.config.trainer, sets=(*configured.config.sets, *choice.sets))
        other = apply_setup(setup, configured.flags, None, has_groups=rollouts.has_groups)
        specs.append(config_spec(setup.mode, other.layout, choice.label))
        lines = config_changes(applied.setup, setup) or ["the same keys and values as the --from-config"]
        changes += [f"{base_label} -> {choice.label}: {line}" for line in lines]
    specs += [parse_spec(text, applied.layout) for text in spec_texts]
    if len(specs) < 2:
        raise AggscopeError("give at least one --to-config (or --to SPEC) to compare against --from-config")
    return specs, changes
