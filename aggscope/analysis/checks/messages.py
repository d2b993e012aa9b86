"""The English of the findings' messages, and the command-line flags a message suggests.

``layout_flags`` gives the flags of a layout (as ``check`` and ``sample`` print them) and
``check_command`` a whole ``aggscope check`` command line; the rest are pieces of messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aggscope.analysis.checks.quantities import Rows
from aggscope.core.layout import Layout
from aggscope.fmt import plural, row_ranges
from aggscope.io.open import bundled_sample_path


def layout_flags(layout: Layout, **changes: Any) -> str:
    """The command-line flags that give ``layout`` (with ``changes``), defaults left out."""
    values = {**layout.to_dict(), **changes}
    default = Layout().to_dict()
    flags = []
    for name, value in values.items():
        if value is None or value == default.get(name) or (name == "seed" and values["order"] != "shuffle"):
            continue
        flags.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(flags)


def check_command(source: str, layout: Layout, **changes: Any) -> str:
    """The ``aggscope check`` command line for ``source`` under ``layout`` (with ``changes``)."""
    path = "" if source.startswith("<") or source == str(bundled_sample_path()) else f" {source}"
    flags = layout_flags(layout, **changes)
    return f"aggscope check{path}{' ' + flags if flags else ''}"


def has_or_have(count: int) -> str:
    return "has" if count == 1 else "have"


def who(uid: str | None, members: np.ndarray) -> str:
    noun = "row" if members.size == 1 else "rows"
    prompt = f" of prompt {uid}" if uid is not None else ""
    return f"{noun} {row_ranges(members, 6)}{prompt}"


def spread(members: np.ndarray, unit: np.ndarray, name: str) -> str:
    values, counts = np.unique(unit[members], return_counts=True)
    return ", ".join(f"{count} in {name} {value}" for value, count in zip(values.tolist(), counts.tolist(), strict=True))


def cut_message(level: str, uid: str, members: np.ndarray, rows: Rows, *, legacy: bool, boundary: bool) -> str:
    size = plural(int(members.size), "row")
    if level == "mini_batch":
        text = (
            f"prompt {uid} ({size}: {spread(members, rows.mini_batch, 'mini-batch')}): one group's update is spread over "
            "several optimizer steps"
        )
        if boundary:
            text += "; a boundary-based prompt_mean (SkyRL) gives its rows past the boundary no gradient (silent_zero_advantage)"
        return text + "."
    mini_batch = int(rows.mini_batch[members[0]])
    if level == "rank":
        text = (
            f"prompt {uid} ({size} in mini-batch {mini_batch}: {spread(members, rows.rank, 'rank')}): the gradient average "
            "over ranks weights it as if unsplit, but anything computed per rank (advantage whitening, per-rank token "
            "means) sees only part of the group"
        )
    else:
        text = (
            f"prompt {uid} ({size} in mini-batch {mini_batch}, rank {int(rows.rank[members[0]])}: "
            f"{spread(members, rows.micro_batch, 'micro-batch')}): split over gradient-accumulation steps"
        )
    if legacy:
        text += (
            "; token_mean_legacy normalises each micro-batch by its own token count, so the group's rows get unequal "
            "per-token weights: use token_mean (one global token count)"
        )
    return text + "."
