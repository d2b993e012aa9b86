"""Shared terminal rendering: consoles and the progress bar over steps (numbers: ``aggscope.fmt``).

Data reaches the terminal escaped: control characters of uids, column names, file names and
messages are shown as ``\\x1b`` (so a uid cannot clear the screen or set the window title), and
data put into rich markup goes through ``markup`` (so ``[/x]`` in a uid is text, not a tag).
"""

import copy
import itertools
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
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
    """Stdout at the width ``COLUMNS`` gives, else the terminal's, else ``WIDTH`` columns when piped
    or captured (every table fits from 80 columns on: see ``fit_table``)."""
    return SafeConsole(width=output_width(), highlight=False, soft_wrap=False)


def output_width() -> Optional[int]:
    """The width to print at: ``COLUMNS`` when set (rich reads it), the terminal's (None), or ``WIDTH``."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else WIDTH


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


@dataclass(frozen=True)
class Column:
    """A column of a table that must fit the terminal without cutting a number or a name.

    Attributes:
        header: the full title.
        short: a shorter title, used only when the full one (wrapped at its spaces) does not fit.
        justify: ``"right"`` for numbers, ``"left"`` for names.
        wrap: the cells may wrap at their spaces (a SPEC label after its commas); other cells never
            wrap or shrink.
    """

    header: str
    short: str = ""
    justify: JustifyMethod = "right"
    wrap: bool = False


@dataclass(frozen=True)
class Row:
    """One row of cells (plain strings or rich markup), with an optional style and a rule above it."""

    cells: Sequence[str]
    style: str = ""
    rule_before: bool = False


def fit_table(console: Console, columns: Sequence[Column], rows: Sequence[Row], title: str = "") -> list[Table]:
    """``rows`` as one table at most ``console.width`` wide, or as several when one cannot be.

    Tries, in order: the full titles, then the short ones, in boxed columns; then both again with
    spaces for column rules; then the short titles wrapped at their spaces. When even that is too
    wide, the table is stacked: the columns after the first are split into parts that fit, each
    part a table of its own that repeats the first column (the mode or SPEC the row is about). No
    cell is ever truncated or shrunk: numbers and mode names are shown whole from 80 columns on.
    """
    wrapping = [column.wrap for column in columns]
    choices = _choices(columns, rows)
    for frame, headers in choices:
        table = _table(columns, headers, rows, title, frame)
        if _least_width(console, table, wrapping) <= console.width:
            return [table]
    frame, headers = choices[3]  # stacked: open columns, short titles on one line
    parts: list[list[int]] = []
    for index in range(1, len(columns)):
        candidate = [0, *parts[-1][1:], index] if parts else [0, index]
        table = _table(columns, headers, rows, "", frame, candidate)
        if parts and _least_width(console, table, [wrapping[i] for i in candidate]) <= console.width:
            parts[-1] = candidate
        else:
            parts.append([0, index])
    parts = _balanced(
        parts,
        lambda part: (
            _least_width(console, _table(columns, headers, rows, "", frame, part), [wrapping[i] for i in part]) <= console.width
        ),
    )
    return [_table(columns, headers, rows, title if i == 0 else "", frame, part) for i, part in enumerate(parts)]


def _balanced(parts: list[list[int]], fits: Callable[[list[int]], bool]) -> list[list[int]]:
    """The same number of parts with the columns shared out evenly, where that fits too (a last
    part of one column reads worse than two parts of three)."""
    values = [index for part in parts for index in part[1:]]
    size = -(-len(values) // len(parts))
    even = [[0, *values[start : start + size]] for start in range(0, len(values), size)]
    return even if len(even) == len(parts) and all(fits(part) for part in even) else parts


@dataclass(frozen=True)
class _Frame:
    """How a table is drawn: boxed columns (3 characters between two columns) or columns set apart
    by 2 spaces under one rule, without a border (narrower by a character per column and 2 in all)."""

    box: box.Box
    show_edge: bool
    padding: tuple[int, int] | tuple[int, int, int, int]


BOXED = _Frame(box.HEAVY_HEAD, True, (0, 1))
OPEN = _Frame(box.SIMPLE_HEAD, False, (0, 0, 0, 1))


def _choices(columns: Sequence[Column], rows: Sequence[Row]) -> list[tuple[_Frame, list[str]]]:
    """The frames and titles to try, widest first."""
    cell_widths = [max((_cell_width(row.cells[i]) for row in rows), default=0) for i in range(len(columns))]

    def wrapped(text: str, cells: int) -> str:
        # each line of a title wraps on its own: a title of one mode per line keeps its lines
        longest_word = max((len(word) for word in text.split()), default=0)
        lines = [textwrap.wrap(line, max(cells, longest_word), break_long_words=False) for line in text.splitlines()]
        return "\n".join(piece for pieces in lines for piece in pieces) or text

    full = [column.header for column in columns]
    short = [column.short or column.header for column in columns]
    wrapped_short = [wrapped(title, cells) for title, cells in zip(short, cell_widths, strict=True)]
    return [(BOXED, full), (BOXED, short), (OPEN, full), (OPEN, short), (OPEN, wrapped_short)]


def _cell_width(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def _table(
    columns: Sequence[Column],
    headers: Sequence[str],
    rows: Sequence[Row],
    title: str,
    frame: _Frame,
    shown: Optional[Sequence[int]] = None,
) -> Table:
    indexes = list(range(len(columns))) if shown is None else list(shown)
    table = Table(
        title=title or None,
        title_justify="left",
        pad_edge=False,
        box=frame.box,
        show_edge=frame.show_edge,
        padding=frame.padding,
    )
    for i in indexes:
        column = columns[i]
        table.add_column(headers[i], justify=column.justify, no_wrap=not column.wrap, overflow="fold")
    for row in rows:
        if row.rule_before:
            table.add_section()
        table.add_row(*(row.cells[i] for i in indexes), style=row.style or None)
    return table


def _least_width(console: Console, table: Table, wrapping: Sequence[bool]) -> int:
    """The fewest columns ``table`` can take without cutting a cell: its natural width less what
    its wrappable columns give up by wrapping at their spaces."""
    untitled = copy.copy(table)
    untitled.title = None  # a title wraps to the table's width; it never widens it
    natural = Measurement.get(console, console.options.update_width(10_000), untitled).maximum
    slack = 0
    for column, wraps in zip(table.columns, wrapping, strict=True):
        if wraps:
            texts = [str(column.header), *(str(cell) for cell in column.cells)]
            lines = [Text.from_markup(line).plain for text in texts for line in text.splitlines()]
            slack += max(map(cell_len, lines), default=0) - max((cell_len(w) for line in lines for w in line.split()), default=0)
    return natural - slack


def wrap_words(text: str, width: int) -> str:
    """``text`` wrapped at its spaces to ``width`` columns; a word longer than that (a SPEC label)
    breaks after its commas rather than anywhere, and only where it has none, anywhere."""
    words: list[tuple[str, bool]] = []  # (piece, whether a space comes before it)
    for word in text.split(" "):
        pieces = re.findall(r"[^,]*,|[^,]+", word) if cell_len(word) > width else [word]
        words += [(piece, index == 0) for index, piece in enumerate(pieces or [""])]
    lines: list[str] = []
    line = ""
    for piece, spaced in words:
        joined = f"{line} {piece}" if spaced and line else line + piece
        if line and cell_len(joined) > width:
            lines.append(line)
            line = piece
        else:
            line = joined
    lines.append(line)
    return "\n".join(lines)
