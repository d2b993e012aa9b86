"""Shared terminal rendering: consoles and tables that fit (numbers: ``aggscope.fmt``; the progress
bar: ``aggscope.cli.progress``).

Data reaches the terminal escaped: control characters of uids, column names, file names and
messages are shown as ``\\x1b`` (so a uid cannot clear the screen or set the window title), and
data put into rich markup goes through ``markup`` (so ``[/x]`` in a uid is text, not a tag).
"""

import copy
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from aggscope.cli.text import CONTROL, Column, Row, output_width, terminal_safe


def markup(value: Any) -> str:
    """A piece of data to put inside rich markup: control characters written out, brackets escaped."""
    return escape(terminal_safe(str(value)))


class SafeConsole(Console):
    """A console that writes out control characters in everything it prints (strings, table cells, Text)."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Text:
        return super().render_str(terminal_safe(text), *args, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        safe = [
            Text(terminal_safe(o.plain), style=o.style) if isinstance(o, Text) and CONTROL.search(o.plain) else o for o in objects
        ]
        super().print(*safe, **kwargs)


def stdout_console() -> Console:
    """Stdout at the width ``COLUMNS`` gives, else the terminal's, else ``WIDTH`` columns when piped
    or captured (every table fits from 80 columns on: see ``fit_table``)."""
    return SafeConsole(width=output_width(), highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return SafeConsole(stderr=True, highlight=False)


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
