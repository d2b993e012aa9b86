"""A dump that records its own layout is its own config (SkyRL's mini-batch boundaries).

``with_recorded_layout`` puts the layout fields an opened input records
(``Rollouts.recorded_layout``) into the layout, unless the command line or a trainer config already
set the mini-batches: then theirs win, and the returned line says what the dump recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aggscope.core.layout import Layout
from aggscope.io.reader import Rollouts

_MINI_BATCH = ("mini_batch_size", "mini_batch_prompts")


@dataclass(frozen=True)
class RecordedLayout:
    """The layout an input records, applied without a trainer config: what commands print and put in
    ``--json`` under ``config``, as they do for a config (``notes``, ``to_dict``)."""

    layout: Layout
    line: str

    @property
    def notes(self) -> list[str]:
        return [self.line]

    def to_dict(self) -> dict[str, Any]:
        return {"source": "the input's own record", "layout": self.layout.to_dict(), "notes": self.notes}


def with_recorded_layout(rollouts: Rollouts, layout: Layout, *, set_by: str | None = None) -> tuple[Layout, str | None]:
    """The layout to compute with, and the line that says where its mini-batches came from.

    Args:
        rollouts: the opened input.
        layout: the layout from the flags (or the config's, with the flags applied).
        set_by: what set ``layout``'s mini-batches (``--config run.yaml``), or None for flags only:
            a mini-batch flag then counts as set exactly when it is not None.

    Returns:
        ``(layout, line)``; ``line`` is None when the input records no layout.
    """
    recorded = rollouts.recorded_layout
    if not recorded:
        return layout, None
    shown = ", ".join(f"{name} {value}" for name, value in recorded.items())
    current = {name: getattr(layout, name) for name in _MINI_BATCH}
    if set_by is None and all(value is None for value in current.values()):
        return layout.replace(**recorded), f"layout from the dump: {shown} ({rollouts.recorded_layout_source})"
    if {name: current[name] for name in recorded} == recorded and not any(
        current[name] is not None for name in _MINI_BATCH if name not in recorded
    ):
        return layout, f"the dump records {shown}, as {set_by or 'the flags'} set"
    given = ", ".join(f"{name} {value}" for name, value in current.items() if value is not None) or "one mini-batch"
    who = "the flags override" if set_by is None else f"{set_by} overrides"
    return layout, f"the dump records {shown}; {who} it with {given}"
