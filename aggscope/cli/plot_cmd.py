"""``aggscope plot``: figures of where the gradient goes under each mode."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aggscope.cli.app import app
from aggscope.cli.config_view import print_applied
from aggscope.cli.options import InputSpec, Modes, engine_options, input_options, layout_options, open_configured
from aggscope.cli.report_cmd import step_progress

OutDir = Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Directory to write into (created if missing).")]


@app.command(
    epilog="Example: aggscope plot rollouts/ -m token_mean -m prompt_mean --mini-batch-prompts 16 --micro-batch-size 4 "
    "-o figures --image-format svg"
)
@input_options
@layout_options
@engine_options
def plot(
    input_spec: InputSpec,
    layout: Any,
    engine: Any,
    *,
    out: OutDir = Path("plots"),
    mode: Modes = None,
    image_format: Annotated[str, typer.Option("--image-format", metavar="FORMAT", help="png, svg or pdf.")] = "png",
    figure: Annotated[
        Optional[list[str]],
        typer.Option(
            "--figure",
            metavar="NAME",
            help="Only this figure (repeatable): weight_distribution, mass_vs_length, prompt_concentration, split_map, "
            "zero_grad_causes, steps. Default: all.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw where the gradient goes under each mode: one image file per figure, named after it."""
    from aggscope.analysis.breakdown import run_breakdown
    from aggscope.analysis.specs import Spec
    from aggscope.core.weights import select_modes
    from aggscope.present.outputs import check_figure_names, check_image_format, check_output_directory

    check_image_format(image_format)
    check_figure_names(figure)
    check_output_directory(out)
    input_spec.refuse_dump_weights(
        "plot", "draws and compares one weight per sequence, and the dump's per-token weights vary inside a sequence"
    )
    rollouts, layout, mode, config = open_configured(input_spec, layout, mode)
    from aggscope.present.figure_set import make_figures, save_figures

    modes = select_modes(mode, has_groups=rollouts.has_groups, layout=layout, source=rollouts.source)
    specs = [Spec(m, layout) for m in modes]
    breakdown = run_breakdown(rollouts, specs, engine=engine, progress=step_progress(rollouts, "plotting"))
    paths = save_figures(make_figures(breakdown, figure), out, image_format)
    from aggscope.cli.render import stdout_console

    console = stdout_console()
    print_applied(config, console)
    for name, path in paths.items():
        console.print(f"{name:<22} {path}", markup=False)
