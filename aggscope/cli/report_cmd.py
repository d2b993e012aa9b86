"""``aggscope report``: every applicable mode at one layout, with figures, as one HTML page and JSON."""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from aggscope.cli.app import app
from aggscope.cli.check_options import check_options, with_trainer
from aggscope.cli.config_view import config_notes
from aggscope.cli.options import InputSpec, Modes, engine_options, input_options, layout_options, open_configured
from aggscope.cli.progress import with_progress
from aggscope.cli.text import Column, Row

# The at-a-glance columns the terminal shows, of the report page's (present.report.tables.GLANCE_COLUMNS),
# and a shorter header where the page's would not fit 100 columns.
TERMINAL_COLUMNS = ("ess_tokens", "longest_quarter", "positive", "no_gradient", "findings")
SHORT_HEADERS = {
    "findings": "findings E/W/I",
    "ess_tokens": "ESS",
    "longest_quarter": "long ¼",
    "positive": "A>0",
    "no_gradient": "no grad",
}


@app.command(
    epilog="Example: aggscope report rollouts/ --mini-batch-size 256 --micro-batch-size 8 --dp-size 4 --max-seq-len 4096 "
    "-o reports; on a Ray cluster: aggscope report s3://bucket/run/ --engine ray --address auto -o reports"
)
@input_options
@layout_options
@engine_options
def report(
    input_spec: InputSpec,
    layout: Any,
    engine: Any,
    mode: Modes = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Directory to write the report into (created if missing).")
    ] = Path("reports"),
) -> None:
    """The main job: every mode at one layout, check's findings and all figures, in one HTML page plus JSON."""
    from aggscope.present.outputs import check_output_directory

    check_output_directory(out)
    input_spec.refuse_dump_weights(
        "report", "draws and compares one weight per sequence, and the dump's per-token weights vary inside a sequence"
    )
    rollouts, layout, mode, config = open_configured(input_spec, layout, mode)
    from aggscope.core.weights import select_modes
    from aggscope.present.report import full_report

    modes = select_modes(mode, has_groups=rollouts.has_groups, layout=layout, source=rollouts.source)
    notes = [*rollouts.notes, *config_notes(config)]
    make_and_write(
        lambda: full_report(
            rollouts,
            modes,
            layout,
            engine=engine,
            progress=step_progress(rollouts, "report"),
            notes=notes,
            check_options=with_trainer(check_options(None, None), config, rollouts.format),
        ),
        out,
    )


def make_and_write(make: Callable[[], Any], out: Path) -> None:
    """Make a report (``make()``) and write it into ``out``, its figures drawn by a standby child that
    imports matplotlib on the other core while the steps are read; then print its summary."""
    from aggscope.present.figure_set import drawing_standby

    with drawing_standby() as standby:
        result = make()
        files = result.write(out, standby=standby)
    print_summary(result, files)


def step_progress(rollouts: Any, description: str) -> Callable[[Iterable[Any]], Iterable[Any]]:
    """A progress bar over the steps' results as they come, with the tokens done (stderr, on a terminal)."""

    def progress(results: Iterable[Any]) -> Iterable[Any]:
        return with_progress(results, len(rollouts.steps), description, tokens=lambda part: part.n_tokens, rollouts=rollouts)

    return progress


def print_summary(result: Any, files: Any) -> None:
    """The opening sentences, one line per mode or SPEC, and where the files are (fits 100 columns)."""
    from aggscope.cli.render import fit_table, markup, stdout_console, wrap_words
    from aggscope.present.report import glance_rows
    from aggscope.present.report.tables import GLANCE_COLUMNS

    console = stdout_console()
    for sentence in result.summary:
        console.print(wrap_words(sentence, console.width), markup=False)
    for note in result.data.input.notes:
        console.print(f"[dim]input: {markup(note)}[/dim]")
    rows = glance_rows(result.data)
    keys = [key for key in TERMINAL_COLUMNS if rows and key in rows[0].cells]
    headers = {**GLANCE_COLUMNS, "findings": SHORT_HEADERS["findings"]}
    columns = [Column("mode" if result.kind == "report" else "SPEC", justify="left", wrap=True)]
    columns += [Column(headers[key], SHORT_HEADERS.get(key, "")) for key in keys]
    # A long SPEC label may wrap after its commas.
    lines = [
        Row((f"[{row.colour}]■[/] {markup(row.label.replace(',', ', '))}", *(row.cells[key] for key in keys))) for row in rows
    ]
    console.print(*fit_table(console, columns, lines))
    console.print(
        f"also written: {files.json}, {files.markdown} and {len(files.figures)} figures in {files.html.parent}", markup=False
    )
    console.print(f"report: [bold]{markup(files.html.resolve())}[/bold]")
