"""``aggscope check``: prompt groups cut by the split, silent zero-advantage rows, tokens without gradient."""

import json
import re
import textwrap
from collections import defaultdict
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from aggscope.cli.app import app
from aggscope.cli.check_options import check_options, with_trainer
from aggscope.cli.config_view import print_applied, with_config
from aggscope.cli.options import InputSpec, Json, Modes, engine_options, input_options, layout_options, open_configured
from aggscope.cli.progress import with_progress
from aggscope.cli.step_lines import CHECK_COLUMNS, CHECK_ORDER, SHOWN_STEPS, check_step_lines, print_step_lines
from aggscope.cli.text import WIDTH, Column, Row

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

SHOWN_PER_CODE = 3
STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
ADDED_CAUSES = ("zero_weight", "nonfinite_weight")


@app.command(
    epilog="Example: aggscope check sample_data/faulty.parquet --mini-batch-size 10 --fail-on warning "
    "(exit 0: nothing at or above --fail-on; 1: something is; 2: bad usage or input)"
)
@input_options
@layout_options
@engine_options
def check(
    input_spec: InputSpec,
    layout: Any,
    engine: Any,
    mode: Modes = None,
    json_output: Json = False,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            metavar="LEVEL",
            help="Exit with code 1 when a finding is at or above this severity: error, warning, info or never.",
        ),
    ] = "error",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every finding with its message and all its rows.")
    ] = False,
    max_no_grad_share: Annotated[
        Optional[str],
        typer.Option(
            "--max-no-grad-share",
            metavar="[WARN,]ERROR",
            help="Shares of loss tokens without gradient that make no_gradient_share a warning and an error, "
            "as 0.5 or 50% (one value: the error share, warning at 25% or below it). Default: 25%,50%; 100% is "
            "always an error.",
            show_default=False,
        ),
    ] = None,
    max_response_len: Annotated[
        Optional[int],
        typer.Option(
            "--max-response-len",
            metavar="N",
            help="The trainer's response-length cap in tokens (default: the --config's): responses that reach it are "
            "truncated_response findings.",
            show_default=False,
        ),
    ] = None,
    all_steps: Annotated[
        bool,
        typer.Option("--all-steps", help=f"List every step's line in the per-step table (default: the {SHOWN_STEPS} worst)."),
    ] = False,
) -> None:
    """Flag splits that cut a prompt group, silent zero-advantage rows, and explain every token without gradient."""
    from aggscope.analysis.check_settings import parse_fail_on

    threshold = parse_fail_on(fail_on)
    options = check_options(max_no_grad_share, max_response_len)
    rollouts, layout, mode, config = open_configured(input_spec, layout, mode)
    from aggscope.analysis.checks import run_checks
    from aggscope.core.weights import select_modes

    options = with_trainer(options, config, rollouts.format, cap_given=max_response_len is not None)
    modes = select_modes(mode, has_groups=rollouts.has_groups, layout=layout, source=rollouts.source)
    report = run_checks(
        rollouts,
        modes,
        layout,
        engine=engine,
        progress=lambda checks: with_progress(checks, len(rollouts.steps), "checking", rollouts=rollouts),
        options=options,
        unused_fields=rollouts.unused_fields,
        used_fields=rollouts.used_fields,
    )
    if json_output:
        typer.echo(json.dumps(with_config(report.to_dict(), config)))
    else:
        print_applied(config)
        _render(report, rollouts.source, len(rollouts.steps), threshold, verbose, all_steps)
    if report.fails(threshold):
        raise typer.Exit(1)


def _render(report: Any, source: str, n_steps: int, threshold: str, verbose: bool, all_steps: bool = False) -> None:
    from rich.text import Text

    from aggscope.analysis.checks import layout_flags
    from aggscope.cli.render import stdout_console
    from aggscope.fmt import number, plural

    console = stdout_console()
    console.print(
        Text(
            f"{source} · {plural(n_steps, 'step')} · {plural(report.sequences, 'sequence')} · "
            f"{plural(report.loss_tokens, 'loss token')}",
            style="bold",
        )
    )
    flags = layout_flags(report.layout) or "one mini-batch per step, one rank"
    console.print(Text(_wrap(f"layout: {flags} · modes: {', '.join(report.modes)}", console.width, ""), style="dim"))
    console.print()
    _render_findings(console, report, verbose)
    if report.worst_step is not None:
        from aggscope.present.lanes import split_picture

        console.print(Text("split of the step with the worst findings", style="bold"))
        for line in split_picture(report.worst_step, min(console.width, WIDTH)):
            console.print(_lane_text(line), no_wrap=True, crop=True)
        console.print()
    if n_steps > 1:
        print_step_lines(console, check_step_lines(report), CHECK_COLUMNS, CHECK_ORDER, all_steps)
        console.print()
    if report.modes:
        console.print(
            Text(f"loss tokens without gradient (w x A is 0 or not finite), of {number(report.loss_tokens)}", style="bold")
        )
        console.print(*_zero_grad_table(console, report))
    for note in report.notes:
        console.print(Text(_wrap(f"note: {note}", console.width, ""), style="dim"))
    if report.lengths_estimated:
        console.print("[yellow]token counts are estimated from text: every token count here is an estimate[/yellow]")
    summary = " · ".join(plural(count, severity) for severity, count in report.counts().items())
    verdict = (
        "[bold red]fails[/bold red]"
        if report.fails(threshold)
        else "[green]passes[/green]"
        if threshold != "never"
        else "[dim]not gated[/dim]"
    )
    console.print(f"{summary} — {verdict} --fail-on {threshold}")


def _render_findings(console: "Console", report: Any, verbose: bool) -> None:
    from rich.text import Text

    from aggscope.fmt import number, plural, row_ranges

    if not report.findings:
        console.print(Text("no findings", style="green"))
        console.print()
        return
    by_code: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for finding in report.findings:  # already worst first
        by_code[(finding.severity, finding.code)].append(finding)
    for (severity, code), findings in by_code.items():
        # a run-wide finding counts the steps' tokens again: add it up only where there is nothing else
        counted = [f for f in findings if f.step is not None] or findings
        rows = sum(len(f.rows) for f in counted)
        tokens = sum(f.tokens for f in counted)
        header = Text()
        header.append(f"{severity.upper():<8}", style=STYLE[severity])
        header.append(code, style="bold")
        header.append(f"  {plural(len(findings), 'finding')} · {plural(rows, 'row')} · {plural(tokens, 'token')}", style="dim")
        console.print(header)
        shown = findings if verbose else findings[:SHOWN_PER_CODE]
        for index, finding in enumerate(shown):
            where = ("all steps" if finding.step is None else f"step {finding.step}") + (
                f" · prompt {finding.uid}" if finding.uid is not None else ""
            )
            row_text = row_ranges(finding.rows, None if verbose else 4)
            noun = "row" if len(finding.rows) == 1 else "rows"
            rows_part = f" · {noun} {row_text}" if finding.rows else ""
            console.print(Text(f"  {where}{rows_part} · {plural(finding.tokens, 'token')}"))
            if verbose or index == 0:
                console.print(Text(_wrap(finding.message, console.width, "    "), style="dim"))
        hidden = len(findings) - len(shown)
        if hidden:
            console.print(Text(f"  … {number(hidden)} more (--verbose lists every finding)", style="dim"))
        console.print()


_UPPER = re.compile(r"[A-Z^]")


def _lane_text(line: str) -> "Text":
    """A line of the split picture, with cut prompts and no-gradient marks highlighted inside the lane."""
    from rich.text import Text

    text = Text(line)
    if line.count("│") == 2:
        begin, end = line.index("│"), line.rindex("│")
        for match in _UPPER.finditer(line, begin, end):
            text.stylize("bold red", match.start(), match.end())
    return text


def _zero_grad_table(console: "Console", report: Any) -> "list[Table]":
    from aggscope.analysis.checks import ZERO_GRAD_CAUSES
    from aggscope.cli.render import fit_table

    total = report.loss_tokens
    # Modes with the same accounting share a column (every canonical mode gives each loss token a
    # positive weight, so they usually all agree).
    columns: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for mode, causes in report.zero_grad.items():
        columns[tuple(causes[c] for c in ZERO_GRAD_CAUSES)].append(mode)
    shown_causes = [
        (index, cause)
        for index, cause in enumerate(ZERO_GRAD_CAUSES)
        if cause not in ADDED_CAUSES or any(counts[index] for counts in columns)
    ]
    headers = [Column("cause", justify="left")]
    headers += [Column(f"every mode ({len(modes)})" if len(columns) == 1 else "\n".join(modes)) for modes in columns.values()]
    rows = [Row((cause, *(_share(counts[index], total) for counts in columns))) for index, cause in shown_causes]
    rows.append(Row(("total", *(_share(sum(counts), total) for counts in columns)), style="bold", rule_before=True))
    return fit_table(console, headers, rows)


def _share(tokens: int, total: int) -> str:
    from aggscope.fmt import MISSING, number, percent

    share = percent(tokens / total) if total else MISSING
    return f"{number(tokens)}  {share:>6}"


def _wrap(text: str, width: int, indent: str) -> str:
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
