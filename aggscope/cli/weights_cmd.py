"""``aggscope weights``: every token's weight under each mode, summarised per step and overall."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from aggscope import fmt
from aggscope.cli.app import app
from aggscope.cli.config_view import print_applied, with_config
from aggscope.cli.options import InputSpec, Json, Modes, engine_options, input_options, layout_options, open_configured
from aggscope.cli.progress import with_progress
from aggscope.cli.step_lines import SHOWN_STEPS, WEIGHTS_COLUMNS, WEIGHTS_ORDER, print_step_lines, weights_step_lines
from aggscope.cli.text import Column, Row

if TYPE_CHECKING:
    from rich.console import Console

PER_STEP_TABLES = 8  # a run of more steps gets one line per step (cli.step_lines)


@app.command(
    epilog="Example: aggscope weights rollouts.parquet --mini-batch-size 256 --micro-batch-size 8 --dp-size 4 "
    "-m token_mean -m seq-mean-token-mean --out weights.parquet; on a Ray cluster: aggscope weights "
    "s3://bucket/run/ --engine ray --address auto --json"
)
@input_options
@layout_options
@engine_options
def weights(
    input_spec: InputSpec,
    layout: Any,
    engine: Any,
    mode: Modes = None,
    json_output: Json = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Write per-token weights and gradient weights to this .parquet file.",
            show_default=False,
        ),
    ] = None,
    all_steps: Annotated[
        bool,
        typer.Option(
            "--all-steps",
            help=f"Runs of more than {PER_STEP_TABLES} steps get one line per step, the {SHOWN_STEPS} worst first: "
            "list every step's line.",
        ),
    ] = False,
) -> None:
    """Recompute every token's weight under each aggregation mode and summarise it per step."""
    rollouts, layout, mode, config = open_configured(input_spec, layout, mode)  # checks the modes first
    from aggscope.analysis.weights import run_weights
    from aggscope.core.weights import select_modes
    from aggscope.io.writing import refuse_to_overwrite_inputs

    if out is not None:
        refuse_to_overwrite_inputs(out, rollouts.files, rollouts.source)
    modes = select_modes(mode, has_groups=rollouts.has_groups, layout=layout, source=rollouts.source)
    report = run_weights(
        rollouts,
        modes,
        layout,
        engine=engine,
        out=out,
        progress=lambda steps: with_progress(steps, len(rollouts.steps), "weights", rollouts=rollouts),
    )
    if json_output:
        typer.echo(json.dumps(with_config(report.to_dict(), config)))
        return
    from aggscope.cli.render import stdout_console

    console = stdout_console()
    print_applied(config, console)
    if len(report.steps) <= PER_STEP_TABLES:
        for step in report.steps:
            _print_table(console, step, f"step {step.step}")
    else:
        print_step_lines(console, weights_step_lines(report.steps), WEIGHTS_COLUMNS, WEIGHTS_ORDER, all_steps)
    _print_table(console, report.total, f"all {fmt.plural(len(report.steps), 'step')}")
    if report.lengths_estimated:
        console.print("[yellow]token counts are estimated from text: every number here is an estimate[/yellow]")
    if out is not None:
        console.print(f"per-token weights written to {out}", markup=False)


MODE_COLUMNS = (
    Column("mode", justify="left"),
    Column("Σ weight"),
    Column("Σ |grad|"),
    Column("ESS tokens", "ESS"),
    Column("long/short", "L/S"),
    Column("zero-grad", "zero"),
    Column("non-finite", "NaN/inf"),
)


def _print_table(console: "Console", step: Any, title: str) -> None:
    """One step's (or all steps') table: a line per mode, fitted to the console's width."""
    from aggscope.cli.render import fit_table, markup

    prompts = "" if step.prompts is None else f" · {fmt.plural(step.prompts, 'prompt')}"
    title = f"{title} · {fmt.plural(step.sequences, 'sequence')}{prompts} · {fmt.plural(step.loss_tokens, 'loss token')}"
    rows = [
        Row(
            (
                markup(name),
                fmt.number(summary.weight_sum),
                fmt.number(summary.grad_abs_sum),
                fmt.number(None if summary.ess_tokens is None else round(summary.ess_tokens)),
                fmt.number(summary.long_short_ratio, 3),
                fmt.number(summary.zero_grad_tokens),
                fmt.number(summary.nonfinite_grad_tokens),
            )
        )
        for name, summary in step.modes.items()
    ]
    for table in fit_table(console, MODE_COLUMNS, rows, title):
        console.print(table)
