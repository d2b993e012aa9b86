"""``aggscope compare``: what switching mode or layout does, candidates against a base, as a report."""

from pathlib import Path
from typing import Annotated, Any

import typer

from aggscope.cli.app import app
from aggscope.cli.config_view import config_notes
from aggscope.cli.options import InputSpec, engine_options, input_options, open_configured, spec_layout_options
from aggscope.cli.report_cmd import print_summary, step_progress

SPEC_HELP = (
    "MODE[,key=value,...]: a mode (any name or alias) plus layout overrides, keys as the layout options without "
    "dashes: mini-batch-size, mini-batch-prompts, micro-batch-size, dp-size, max-seq-len, order, seed, composition."
)


@app.command(
    epilog="Example: aggscope compare rollouts/ --from token_mean --to prompt_mean,mini-batch-prompts=16,micro-batch-size=4 "
    "--to seq-mean-token-mean -o compare"
)
@input_options
@spec_layout_options
@engine_options
def compare(
    source: InputSpec,
    layout: Any,
    engine: Any,
    *,
    base: Annotated[str, typer.Option("--from", help=f"The configuration you have. {SPEC_HELP}", show_default=False)],
    candidates: Annotated[
        list[str], typer.Option("--to", help="A configuration to compare against it (repeatable); same form.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the report into (created if missing).")],
) -> None:
    """Compare candidate modes and layouts against a base: where the gradient mass moves, as a report."""
    from aggscope.analysis.specs import parse_specs
    from aggscope.present.figures import check_output_directory
    from aggscope.present.report import compare as compare_report

    rollouts, layout, _, config = open_configured(source, layout, None)
    specs = parse_specs(base, candidates, layout)
    check_output_directory(out)
    notes = [*rollouts.notes, *config_notes(config)]
    result = compare_report(rollouts, specs, engine=engine, progress=step_progress(rollouts, "compare"), notes=notes)
    print_summary(result, result.write(out))
