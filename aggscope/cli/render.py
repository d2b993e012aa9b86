"""Shared terminal rendering: number formats, consoles, the progress bar over steps."""

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
WIDTH = 100


def stdout_console() -> Console:
    """Stdout at the terminal's width, or ``WIDTH`` columns when piped or captured."""
    width = None if sys.stdout.isatty() else WIDTH
    return Console(width=width, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def fmt_int(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:,}"


def fmt_float(value: Optional[float], digits: int = 4) -> str:
    """Short, readable float: None or non-finite as '-', else ``digits`` significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def with_progress(items: Iterable[T], total: int, description: str, tokens: Optional[Callable[[T], int]] = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when it is a terminal and there is work to show.

    ``tokens`` gives the token count of an item, to show the tokens done so far beside the steps.
    """
    if total <= 1 or not sys.stderr.isatty():
        yield from items
        return
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if tokens is not None:
        columns.append(TextColumn("{task.fields[tokens]:,} tokens"))
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task(description, total=total, tokens=0)
        done = 0
        for item in items:
            yield item
            done += tokens(item) if tokens is not None else 0
            progress.update(task, advance=1, tokens=done)
