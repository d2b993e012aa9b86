"""``aggscope report``: every applicable mode at one layout, with figures, as one HTML page and JSON."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aggscope.cli.app import app
from aggscope.cli.options import InputSpec, Modes, engine_options, input_options, layout_options
from aggscope.cli.render import fmt_int, markup, stdout_console, with_progress


@app.command(
    epilog="Example: aggscope report rollouts/ --mini-batch-size 256 --micro-batch-size 8 --dp-size 4 --max-seq-len 4096 "
    "-o reports; on a Ray cluster: aggscope report s3://bucket/run/ --engine ray --address auto -o reports"
)
@input_options
@layout_options
@engine_options
def report(
    source: InputSpec,
    layout: Any,
    engine: Any,
    mode: Modes = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the report into (created if missing).")] = Path(
        "reports"
    ),
) -> None:
    """The main job: every mode at one layout, check's findings and all figures, in one HTML page plus JSON."""
    from aggscope.analysis.specs import Spec
    from aggscope.core.weights import select_modes
    from aggscope.present.figures import check_output_directory
    from aggscope.present.report import build_report

    check_output_directory(out)
    rollouts = source.open()
    modes = select_modes(mode, has_groups=rollouts.has_groups, layout=layout, source=rollouts.source)
    breakdown = analyse(rollouts, [Spec(m, layout) for m in modes], engine, "report")
    result = build_report(breakdown, "report", rollouts.notes)
    print_summary(result, result.write(out))


def analyse(rollouts: Any, specs: Any, engine: Any, description: str) -> Any:
    """The breakdown of every step under the SPECs, on the engine, with a progress bar."""
    from aggscope.analysis.breakdown import run_breakdown_on

    def progress(items: Any) -> Any:
        return with_progress(items, len(rollouts.steps), description, tokens=lambda item: item.n_tokens, rollouts=rollouts)

    return run_breakdown_on(engine, rollouts, specs, source=rollouts.source, progress=progress)


def print_summary(result: Any, files: Any) -> None:
    """The opening sentences, one line per mode or SPEC, and where the files are (fits 100 columns)."""
    console = stdout_console()
    for sentence in result.summary:
        console.print(sentence, markup=False)
    for note in result.document["input"]["notes"]:
        console.print(f"[dim]input: {markup(note)}[/dim]")
    from aggscope.present.report import severity_counts

    document = result.document
    with_checks = result.kind == "compare"
    table = Table(pad_edge=False, title_justify="left")
    table.add_column("mode" if result.kind == "report" else "SPEC", overflow="fold")
    for header in ("ESS tokens", "longest ¼ mass", "positive-A mass", "no gradient"):
        table.add_column(header, justify="right", no_wrap=True)
    if with_checks:
        table.add_column("findings E/W/I", justify="right", no_wrap=True)
    for spec in document["specs"]:
        entry = document["results"][spec["label"]]
        total = entry["total"]
        ess = total["ess_tokens"]
        cells = [
            f"[{spec['colour']}]■[/] {spec['label'].replace(',', ', ')}",
            fmt_int(None if ess is None else round(ess)),
            _share(entry["length_quartiles"]["grad_mass_share"][3]),
            _share(entry["advantage_sign"]["positive_share"]),
            fmt_int(total["zero_grad_tokens"] + total["nonfinite_grad_tokens"]),
        ]
        if with_checks:
            cells.append(severity_counts(entry["checks"]))
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"also written: {files.json}, {files.markdown} and {len(files.figures)} figures in {files.html.parent}", markup=False
    )
    console.print(f"report: [bold]{markup(files.html.resolve())}[/bold]")


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
