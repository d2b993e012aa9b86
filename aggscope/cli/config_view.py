"""What a trainer config gave: ``inspect --config`` in full, and the few lines other commands print."""

import textwrap
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from rich.console import Console

ORDER = (
    "mode",
    "step_rows",
    "updates",
    "mini_batch_size",
    "mini_batch_prompts",
    "composition",
    "dp_size",
    "micro_batch_size",
    "order",
    "seed",
    "max_seq_len",
    "advantage",
    "response_cap",
)


def print_setup(setup: Any) -> None:
    """``aggscope inspect --config``: every derived value with its keys and arithmetic, then every
    other key of the config, by what aggscope does with it."""
    from rich.markup import escape
    from rich.table import Table

    from aggscope.cli.render import stdout_console

    console = stdout_console()
    files = ", ".join(setup.files) or "its defaults and --set"
    console.print(f"[bold]{setup.trainer} config[/bold] ({setup.release}): {escape(files)}")
    derived = Table(title="derived", title_justify="left", pad_edge=False, show_header=True)
    derived.add_column("value", no_wrap=True)
    derived.add_column("= from the config", overflow="fold")
    ranked = sorted(setup.derivations, key=lambda d: ORDER.index(d.name) if d.name in ORDER else len(ORDER))
    for derivation in ranked:
        label, _, arithmetic = derivation.line.partition(" = ")
        keys = f"\n[dim]{escape(', '.join(derivation.keys))}[/dim]" if derivation.keys else ""
        derived.add_row(escape(label), escape(arithmetic) + keys)
    console.print(derived)
    if setup.checked:
        console.print("[bold]read and checked[/bold] [dim](their values need no modelling here)[/dim]")
        _paragraph(console, ", ".join(f"{key} {_show(value)}" for key, value in setup.checked), "  ")
    if setup.unmodelled:
        console.print("[bold]read, not modelled[/bold] [dim](what each does that aggscope leaves out)[/dim]")
        for item in setup.unmodelled:
            _paragraph(console, f"{item.key} = {_show(item.value)}: {item.effect}", "  ", "      ")
    if setup.other_keys:
        console.print(f"[bold]other keys[/bold] [dim]({len(setup.other_keys)}, no effect on the weights)[/dim]")
        _paragraph(console, ", ".join(setup.other_keys), "  ")
    for note in setup.notes:
        _paragraph(console, f"note: {note}", "", "  ", "dim")
    for text in setup.not_exact:
        _paragraph(console, f"not exact: {text}", "", "  ", "yellow")
    for refusal in setup.refusals:
        _paragraph(console, f"refused by the commands that compute weights: {refusal.message}", "", "  ", "red")


def print_applied(applied: Optional[Any], console: "Optional[Console]" = None) -> None:
    """The lines every analysing command prints about the config it used (nothing without one)."""
    if applied is None:
        return
    from aggscope.cli.render import stdout_console

    console = console or stdout_console()
    for line in applied.notes:
        _paragraph(console, f"config: {line}", "", "  ", "yellow" if line.startswith("not exact") else "dim")


def config_notes(applied: Optional[Any]) -> list[str]:
    """The config's lines as notes of a report document (none without a config)."""
    return [] if applied is None else list(applied.notes)


def with_config(document: dict, applied: Optional[Any]) -> dict:
    """A ``--json`` document with the config it used under ``config`` (unchanged without one)."""
    return document if applied is None else {**document, "config": applied.to_dict()}


def _paragraph(console: "Console", text: str, indent: str, then: Optional[str] = None, style: str = "") -> None:
    from rich.text import Text

    width = max(console.width, 40)
    wrapped = textwrap.fill(text, width, initial_indent=indent, subsequent_indent=then or indent, break_on_hyphens=False)
    console.print(Text(wrapped, style=style))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
