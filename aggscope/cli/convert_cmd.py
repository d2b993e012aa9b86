"""``aggscope convert``: write any supported input as the canonical Parquet, to analyse it many times."""

from pathlib import Path
from typing import Annotated

import typer

from aggscope import fmt
from aggscope.cli.app import app
from aggscope.cli.options import InputSpec, Json, input_options
from aggscope.cli.progress import with_progress


@app.command(epilog="Example: aggscope convert rollout_data_dir/ -o rollouts.parquet --format verl --advantage grpo")
@input_options
def convert(
    input_spec: InputSpec,
    *,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="The canonical .parquet file to write (whole or not at all).")
    ],
    json_output: Json = False,
) -> None:
    """Convert a trainer's dump (or any input) to the canonical Parquet that every command reads."""
    import json

    from aggscope.io.canonical import write_canonical
    from aggscope.io.writing import refuse_to_overwrite_inputs

    input_spec.refuse_dump_weights("convert", "writes canonical Parquet, which has no column for per-token loss weights")
    rollouts = input_spec.open()
    refuse_to_overwrite_inputs(out, rollouts.files, rollouts.source)
    summary = write_canonical(
        rollouts, out, with_progress(rollouts.iter_steps(), len(rollouts.steps), "converting", rollouts=rollouts)
    )
    if json_output:
        typer.echo(json.dumps(summary.to_dict()))
        return
    from aggscope.cli.render import stdout_console

    console = stdout_console()
    console.print(
        f"wrote {summary.path}: {fmt.plural(summary.steps, 'step')}, {fmt.plural(summary.sequences, 'sequence')}, "
        f"{fmt.plural(summary.tokens, 'token')} ({fmt.plural(summary.loss_tokens, 'loss token')})",
        markup=False,
    )
    for note in summary.notes:
        console.print(f"note: {note}", markup=False, style="dim")
    if summary.lengths_estimated:
        console.print(
            "[yellow]token counts are estimated from text; the file records it, so every command reading it says so[/yellow]"
        )
