"""What ``aggscope check`` can find: the finding codes, their severities and order, and ``Finding``.

``CODES`` lists every code with its default severity, in the order findings of equal severity are
listed; ``SEVERITIES`` are worst first. ``CUT_LEVELS`` are the split's levels, coarsest first, and
``ZERO_GRAD_CAUSES`` the causes of a loss token without gradient, in the order they are tried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggscope.analysis.check_settings import SEVERITIES

CUT_LEVELS = ("mini_batch", "rank", "micro_batch")
ZERO_GRAD_CAUSES = (
    "nonfinite_advantage",
    "zero_variance_group",
    "reward_at_group_mean",
    "zero_advantage",
    "zero_weight",
    "nonfinite_weight",
)


@dataclass(frozen=True)
class CheckCode:
    """A finding's stable code and its default severity (README.md's table says what each finds)."""

    code: str
    severity: str


CODES: dict[str, CheckCode] = {
    c.code: c
    for c in (
        CheckCode("no_gradient_share", "warning"),  # first: the verdict on the whole step or run
        CheckCode("prompt_cut_by_mini_batch", "warning"),
        CheckCode("prompt_cut_by_rank", "info"),
        CheckCode("prompt_cut_by_micro_batch", "info"),
        CheckCode("silent_zero_advantage", "error"),
        CheckCode("rebased_prompt_mean_misweight", "warning"),
        CheckCode("nonfinite_advantage", "error"),
        CheckCode("zero_advantage", "error"),
        CheckCode("noncontiguous_uid", "warning"),
        CheckCode("masked_token_advantage", "warning"),
        CheckCode("empty_sequence", "warning"),
        CheckCode("truncated_response", "warning"),
        CheckCode("unused_dump_field", "warning"),
        CheckCode("singleton_group", "warning"),
        CheckCode("incomplete_group", "warning"),
        CheckCode("zero_variance_group", "info"),
    )
}
CODE_ORDER = {code: index for index, code in enumerate(CODES)}
SEVERITY_RANK = {severity: index for index, severity in enumerate(SEVERITIES)}
CUT_CODES = {level: f"prompt_cut_by_{level}" for level in CUT_LEVELS}
ADVISED_CODES = ("prompt_cut_by_mini_batch", "silent_zero_advantage")
# The modes that divide by the mini-batch's sequence count N_b, where an empty row dilutes the rest.
SEQUENCE_DENOMINATOR_MODES = ("sequence_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "seq_mean_token_sum_norm_padded")
# The cut levels whose severity token_mean_legacy raises (it normalises each micro-batch by its own tokens).
LEGACY_CUT_CODES = ("prompt_cut_by_rank", "prompt_cut_by_micro_batch")


@dataclass(frozen=True)
class Finding:
    """One problem found in one step.

    Attributes:
        code: stable code (a key of ``CODES``).
        severity: ``error``, ``warning`` or ``info``.
        step: the step, or None for a finding on the whole run.
        uid: the prompt group, or None where none applies.
        rows: ``seq_index`` values of the rows concerned, ascending.
        tokens: loss tokens affected (see the package notes for the two exceptions).
        message: what it means and what to change.
        modes: the modes the finding concerns (it is raised only because one of them is selected);
            empty when it concerns every mode.
    """

    code: str
    severity: str
    step: int | None
    uid: str | None
    rows: tuple[int, ...]
    tokens: int
    message: str
    modes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # spelt out: dataclasses.asdict deep-copies every row number, a large part of a report's JSON time
        return {
            "code": self.code,
            "severity": self.severity,
            "step": self.step,
            "uid": self.uid,
            "rows": list(self.rows),
            "tokens": self.tokens,
            "message": self.message,
            "modes": list(self.modes),
        }

    def concerns(self, mode: str) -> bool:
        """True when the finding matters for ``mode``."""
        return not self.modes or mode in self.modes

    @property
    def sort_key(self) -> tuple[int, int, int, int]:
        step = -1 if self.step is None else self.step  # a run-wide finding before the steps' own
        return (SEVERITY_RANK[self.severity], CODE_ORDER[self.code], step, self.rows[0] if self.rows else -1)


def count_severities(findings: Iterable[Finding], step: int | None = None) -> dict[str, int]:
    """Findings per severity, ``{severity: count}`` worst first, over all steps or in one step."""
    counts = Counter(f.severity for f in findings if step is None or f.step == step)
    return {severity: counts[severity] for severity in SEVERITIES}
