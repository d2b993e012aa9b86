"""What the summary ranks: one change of a candidate against the base, and the threshold below which it is negligible.

Its own module so that the document (``report.json``) and the sentences both use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aggscope.core.layout import Layout

# A change smaller than this (in points of share, or percent for ESS) is listed as negligible.
SENTENCE_THRESHOLD = 1.0


@dataclass(frozen=True)
class HeadlineItem:
    """One change the summary can state, with its size for ranking.

    Attributes:
        kind: one of ``SENTENCE_KINDS``.
        candidate: the SPEC it is about.
        size: points of share (percent for ``ess``, which ranks after the moves of share);
            ``lost_gradient`` and ``check_errors`` always rank first (at least 100).
        sentence: the sentence stating it.
        negligible: below ``SENTENCE_THRESHOLD``: listed as negligible, not stated.
    """

    kind: str
    candidate: str
    size: float
    sentence: str
    negligible: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_layout_given(layout: Layout) -> bool:
    """The layout cuts a step (mini-batches, ranks or micro-batches), unlike the default."""
    return (
        layout.mini_batch_size is not None
        or layout.mini_batch_prompts is not None
        or layout.micro_batch_size is not None
        or layout.dp_size != 1
    )
