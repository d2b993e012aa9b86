"""``aggscope inspect``: what the input holds and how its columns were read."""

import json
from typing import Annotated, Any, Optional

import typer

from aggscope import fmt
from aggscope.cli.app import app
from aggscope.cli.config_view import print_setup
from aggscope.cli.options import InputSpec, Json, config_options, input_options
from aggscope.cli.progress import with_progress
from aggscope.cli.text import Column, Row


@app.command(
    epilog="Example: aggscope inspect rollouts/ --col uid=prompt_id --json; aggscope inspect 2.jsonl --uid 3f2a9c1b0d4e; "
    "aggscope inspect --config run/.hydra/config.yaml (what a trainer config gives, key by key)"
)
@input_options
@config_options
def inspect(
    input_spec: InputSpec,
    config: Any,
    json_output: Json = False,
    uid: Annotated[
        Optional[str],
        typer.Option(
            "--uid",
            metavar="UID",
            help="Show the prompt text behind this uid and its rows, rewards and loss tokens.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show the detected column mapping, steps, prompts, group sizes, loss tokens and lengths; with --config, the
    layout and mode a trainer config gives, each value with its keys and arithmetic."""
    from aggscope.analysis.describe import describe, describe_uid

    if config is not None:
        setup = config.load(None if input_spec.path is None and input_spec.format is None else _format_of(input_spec))
        if json_output:
            typer.echo(json.dumps(setup.to_dict()))
        else:
            print_setup(setup)
        return

    rollouts = input_spec.open()
    if uid is not None:
        found = describe_uid(
            rollouts, uid, with_progress(rollouts.iter_steps(), len(rollouts.steps), "reading", rollouts=rollouts)
        )
        if json_output:
            typer.echo(json.dumps(found.to_dict()))
        else:
            _print_uid(found)
        return
    description = describe(rollouts, with_progress(rollouts.iter_steps(), len(rollouts.steps), "reading", rollouts=rollouts))
    from aggscope.io.logged_config import logged_config

    logged = logged_config(input_spec.path)  # a trainer integration's config beside the batches
    if json_output:
        typer.echo(json.dumps({**description.to_dict(), "logged_config": None if logged is None else logged[0]}))
        return
    _print_description(description, logged)


def _print_description(description: Any, logged: Optional[tuple[str, str]]) -> None:
    """``inspect``'s tables and notes for a human (``--json`` gives the same as one document)."""
    from rich.table import Table

    from aggscope.cli.render import fit_table, markup, stdout_console

    console = stdout_console()
    files = description.files
    console.print(f"[bold]{markup(description.source)}[/bold]: {fmt.plural(len(files), 'file')}, {description.format} layout")
    mapping = Table(title="columns", title_justify="left", pad_edge=False)
    mapping.add_column("role")
    mapping.add_column("column")
    for role in ("uid", "uid_text", "advantages", "loss_mask", "response_length", "reward", "step", "sequence"):
        if role in description.columns:
            mapping.add_row(role, markup(description.columns[role]))
    console.print(mapping)
    for note in description.notes:
        console.print(f"[dim]note: {markup(note)}[/dim]")
    if logged is not None:
        console.print(
            f"trainer config: {markup(logged[0])} ({logged[1]}, written by aggscope's integration): weights, check, report, "
            f"compare and plot use it as --config; aggscope inspect --config {markup(logged[0])} shows what it gives"
        )
    _print_unrecoverable(console, description.unrecoverable)
    if not any(role in description.columns for role in ("uid", "uid_text")):
        console.print(
            "[yellow]no uid column: prompt_mean and prompt-level checks are unavailable (set one with --col uid=NAME)[/yellow]"
        )
    rows = []
    for step in description.steps:
        sizes = (
            fmt.MISSING
            if step.group_sizes is None
            else ", ".join(f"{size}×{count}" for size, count in sorted(step.group_sizes.items()))
        )
        pct = step.loss_tokens_percentiles
        cells = (
            fmt.number(step.step),
            fmt.number(step.sequences),
            fmt.number(step.prompts),
            sizes,
            fmt.number(step.tokens),
            fmt.number(step.loss_tokens),
            *(fmt.number(round(pct[k])) if k in pct else fmt.MISSING for k in ("p10", "p50", "p90", "p100")),
        )
        rows.append(Row(cells))
    console.print(*fit_table(console, STEP_COLUMNS, rows, "steps"))
    console.print("[dim]p10 ... max: loss tokens per sequence[/dim]")
    if description.lengths_estimated:
        console.print("[yellow]token counts are estimated from text[/yellow]")


def _print_unrecoverable(console: Any, facts: list[dict[str, Any]]) -> None:
    """What the dump cannot tell, each fact with the numbers it changes (``--json``: ``unrecoverable``)."""
    from aggscope.cli.render import markup

    if not facts:
        return
    console.print("[bold]not in this dump[/bold] (what each lack changes):")
    for fact in facts:
        modes = f" [modes: {markup(', '.join(fact['modes']))}]" if fact["modes"] else ""
        console.print(f"  - {markup(fact['fact'])}: {markup(fact['affects'])}{modes}")


STEP_COLUMNS = (
    Column("step"),
    Column("sequences", "seqs"),
    Column("prompts"),
    Column("group sizes", "groups", justify="left", wrap=True),
    Column("tokens"),
    Column("loss tokens", "loss tok"),
    Column("p10"),
    Column("p50"),
    Column("p90"),
    Column("max"),
)


def _print_uid(found: Any) -> None:
    from rich.table import Table

    from aggscope.cli.render import markup, stdout_console

    console = stdout_console()
    rows = sum(len(o.rows) for o in found.occurrences)
    console.print(
        f"[bold]uid {markup(found.uid)}[/bold]: {fmt.plural(rows, 'row')} in {fmt.plural(len(found.occurrences), 'step')}"
    )
    if found.text is None:
        console.print("[dim]the input holds no prompt text for this uid[/dim]")
    else:
        console.print("prompt text:")
        console.print(found.text, markup=False, highlight=False, soft_wrap=True)
    table = Table(title="rows", title_justify="left", pad_edge=False)
    for header in ("step", "row", "reward", "loss tokens"):
        table.add_column(header, justify="right")
    for occurrence in found.occurrences:
        rewards = occurrence.rewards or [None] * len(occurrence.rows)
        for row, reward, tokens in zip(occurrence.rows, rewards, occurrence.loss_tokens, strict=True):
            table.add_row(fmt.number(occurrence.step), fmt.number(row), fmt.number(reward), fmt.number(tokens))
    console.print(table)
    if found.lengths_estimated:
        console.print("[yellow]token counts are estimated from text[/yellow]")


def _format_of(input_spec: InputSpec) -> Any:
    from aggscope.cli.options import _input_format

    return _input_format(input_spec)
