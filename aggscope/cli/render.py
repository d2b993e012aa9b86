"""Shared terminal rendering: consoles and the progress bar over steps (numbers: ``aggscope.fmt``).

Data reaches the terminal escaped: control characters of uids, column names, file names and
messages are shown as ``\\x1b`` (so a uid cannot clear the screen or set the window title), and
data put into rich markup goes through ``markup`` (so ``[/x]`` in a uid is text, not a tag).
"""

import itertools
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

if TYPE_CHECKING:
    from aggscope.io.reader import Rollouts

T = TypeVar("T")
WIDTH = 100
# C0 controls but newline and tab, DEL, C1 controls, and the bidirectional overrides that reorder text
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character written out (``\\x1b``, ``\\u202e``): safe to print."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def markup(value: Any) -> str:
    """A piece of data to put inside rich markup: control characters written out, brackets escaped."""
    return escape(terminal_safe(str(value)))


class SafeConsole(Console):
    """A console that writes out control characters in everything it prints (strings, table cells, Text)."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Text:
        return super().render_str(terminal_safe(text), *args, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        safe = [
            Text(terminal_safe(o.plain), style=o.style) if isinstance(o, Text) and _CONTROL.search(o.plain) else o
            for o in objects
        ]
        super().print(*safe, **kwargs)


def stdout_console() -> Console:
    """Stdout at the terminal's width, or ``WIDTH`` columns when piped or captured."""
    width = None if sys.stdout.isatty() else WIDTH
    return SafeConsole(width=width, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return SafeConsole(stderr=True, highlight=False)


PROGRESS_MIN_TOKENS = 1 << 23  # an input of one step gets a bar from this many tokens on


def with_progress(
    items: Iterable[T],
    total: int,
    description: str,
    tokens: Optional[Callable[[T], int]] = None,
    rollouts: "Optional[Rollouts]" = None,
) -> Iterator[T]:
    """Iterate ``items`` (one per step) with a progress bar on stderr when it is a terminal and there is work to show.

    ``tokens`` gives the token count of an item, to show the tokens done so far beside the steps.
    With ``rollouts`` whose Parquet metadata gives every step's token count, the bar moves with the
    tokens as they are decoded, so one big step shows progress too.
    """
    if not sys.stderr.isatty():
        yield from items
        return
    sizes = _step_sizes(rollouts)
    if sizes is not None and (total > 1 or sum(sizes) >= PROGRESS_MIN_TOKENS):
        yield from _token_progress(items, sizes, description)
        return
    if total <= 1:
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


def _step_sizes(rollouts: "Optional[Rollouts]") -> Optional[list[int]]:
    """Every step's token count from the metadata, or None where some step's is not known."""
    if rollouts is None:
        return None
    sizes = [rollouts.step_tokens(step) for step in rollouts.steps]
    return None if any(size is None for size in sizes) else [size for size in sizes if size is not None]


def _token_progress(items: Iterable[T], sizes: list[int], description: str) -> Iterator[T]:
    """A bar over tokens: it moves as this process decodes them, and jumps to each step's end when
    the step's result arrives (also when another process, a Ray worker, read it)."""
    from aggscope.io.fastread import reading_progress

    ends = list(itertools.accumulate(sizes))
    columns: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TimeElapsedColumn(),
    ]
    state = {"done": 0, "step": 0}
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task(description, total=max(ends[-1], 1), steps=f"0/{len(sizes)} steps", tokens=0)

        def read(tokens: int) -> None:
            state["done"] = min(state["done"] + tokens, ends[min(state["step"], len(ends) - 1)])
            progress.update(task, completed=state["done"], tokens=state["done"])

        iterator = iter(items)
        while True:
            # Listen only while the next step is produced, never across a yield: a consumer that
            # stops early leaves no listener behind.
            with reading_progress(read):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            state["done"] = ends[min(state["step"], len(ends) - 1)]
            state["step"] += 1
            progress.update(task, completed=state["done"], tokens=state["done"], steps=f"{state['step']}/{len(sizes)} steps")
            yield item
