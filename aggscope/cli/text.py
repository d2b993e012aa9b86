"""What the commands need before anything is drawn: the width, safe text and the shape of a table.

Nothing here imports rich: ``--help`` and a usage error load none of it. The drawing itself is
``aggscope.cli.render``, which a command imports when it prints.
"""

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

WIDTH = 100
# C0 controls but newline and tab, DEL, C1 controls, and the bidirectional overrides that reorder text
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
Justify = Literal["default", "left", "center", "right", "full"]  # rich's JustifyMethod


def terminal_safe(text: str) -> str:
    """``text`` with every control character written out (``\\x1b``, ``\\u202e``): safe to print."""
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def output_width() -> Optional[int]:
    """The width to print at: ``COLUMNS`` when set (rich reads it), the terminal's (None), or ``WIDTH``."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else WIDTH


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
    justify: Justify = "right"
    wrap: bool = False


@dataclass(frozen=True)
class Row:
    """One row of cells (plain strings or rich markup), with an optional style and a rule above it."""

    cells: Sequence[str]
    style: str = ""
    rule_before: bool = False
