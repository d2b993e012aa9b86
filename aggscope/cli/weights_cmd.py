"""``aggscope weights``: every token's weight under each mode, summarised per step and overall."""

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from aggscope import fmt
from aggscope.cli.app import app
from aggscope.cli.config_view import print_applied, with_config
from aggscope.cli.options import InputSpec, Json, Modes, engine_options, input_options, layout_options, open_configured
from aggscope.cli.render import stdout_console, with_progress

PER_STEP_TABLES = 8


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
        bool, typer.Option("--all-steps", help=f"Print a table for every step (default: up to {PER_STEP_TABLES}).")
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
    console = stdout_console()
    print_applied(config, console)
    shown = report.steps if all_steps or len(report.steps) <= PER_STEP_TABLES else []
    for step in shown:
        console.print(_table(step, f"step {step.step}"))
    if len(report.steps) > len(shown):
        console.print(
            f"[dim]{len(report.steps)} steps: per-step tables omitted (--all-steps shows them, --json gives all numbers)[/dim]"
        )
    console.print(_table(report.total, f"all {len(report.steps)} steps"))
    if report.lengths_estimated:
        console.print("[yellow]token counts are estimated from text: every number here is an estimate[/yellow]")
    if out is not None:
        console.print(f"per-token weights written to {out}", markup=False)


def _table(step: Any, title: str) -> Table:
    prompts = "" if step.prompts is None else f" · {step.prompts:,} prompts"
    table = Table(
        title=f"{title} · {step.sequences:,} sequences{prompts} · {step.loss_tokens:,} loss tokens",
        title_justify="left",
        expand=False,
        pad_edge=False,
    )
    table.add_column("mode", no_wrap=True)
    for header in ("Σ weight", "Σ |grad|", "ESS tokens", "long/short", "zero-grad", "non-finite"):
        table.add_column(header, justify="right", no_wrap=True)
    for name, summary in step.modes.items():
        table.add_row(
            name,
            fmt.number(summary.weight_sum),
            fmt.number(summary.grad_abs_sum),
            fmt.number(None if summary.ess_tokens is None else round(summary.ess_tokens)),
            fmt.number(summary.long_short_ratio, 3),
            fmt.number(summary.zero_grad_tokens),
            fmt.number(summary.nonfinite_grad_tokens),
        )
    return table
