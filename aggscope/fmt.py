"""One way to write numbers, shares, counts and row lists, for the terminal, the messages and the report.

The rule: integers with thousands separators (``324,757``); floats with ``digits`` significant
digits and separators (``0.9342``, ``1,235``), in scientific notation below 1e-3 and from 1e6
(``3.248e+06``); a missing or non-finite value as ``–``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where rows are written, not on the way to --help
    import numpy as np

MISSING = "–"


def number(value: Any, digits: int = 4) -> str:
    """A number as the terminal and the report show it (see the module docstring)."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python's and numpy's booleans
        return str(bool(value))
    if isinstance(value, numbers.Integral):  # numpy's integers are registered as Integral
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return MISSING
        if value == 0:
            return "0"
        if abs(value) >= 1e6 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def percent(share: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage, ``36.3%``; above 0 but below the last digit, ``<0.1%``."""
    if share is None or not math.isfinite(share):
        return MISSING
    if 0 < share < 10 ** (-digits) / 100:
        return f"<{10 ** (-digits):.{digits}f}%"
    return f"{100 * share:.{digits}f}%"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 row``, ``3 rows``, ``1,024 warnings``; ``many`` for irregular plurals (``mini-batches``)."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def row_ranges(rows: Sequence[int] | np.ndarray, limit: int | None = None) -> str:
    """Rows as ranges, ``0-3, 8, 10-11``; with ``limit``, at most that many ranges then ``…``."""
    import numpy as np

    values = np.asarray(rows, dtype=np.int64)
    if values.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [values.size]]) - 1
    pieces = [
        str(values[s]) if s == e else f"{values[s]}-{values[e]}" for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    if limit is not None and len(pieces) > limit:
        return ", ".join(pieces[:limit]) + f", … ({values.size} rows)"
    return ", ".join(pieces)
