"""What the reports state of a breakdown: each SPEC's numbers, and each candidate's change against the base.

``compare_specs`` groups the breakdown once (length quartiles and deciles, prompt difficulty) and
gives, per SPEC, a ``SpecOutcome`` (the engine's summaries, the shares per bucket and per sign of
the advantage, the concentration across prompts, check's report), and per candidate a ``Change``
from the first SPEC (the base): how its shares shift, its effective number of tokens, the quantiles
of the per-token weight ratio and the prompts that gain or lose the most. Every result keeps its
numbers typed; ``to_dict`` gives the JSON of ``report.json``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.analysis.breakdown.groups import Coincidence, coincidences, updates_per_step
from aggscope.analysis.breakdown.model import (
    MIN_ROWS_PER_BUCKET,
    Breakdown,
    Buckets,
    BucketShares,
    Concentration,
    PromptMove,
    SignShares,
)
from aggscope.analysis.check_settings import BOUNDARY_TRAINERS
from aggscope.analysis.checks import CheckReport
from aggscope.analysis.specs import Spec
from aggscope.core.summaries import ModeSummary

# The zero-gradient cause of the tokens SkyRL trains at weight 0 where aggscope's (canonical) prompt_mean
# gives them a gradient: rows of a prompt cut by a mini-batch boundary, past the boundary.
SKYRL_CUT_CAUSE = "skyrl_cut_prompt"
RATIO_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
TOP_PROMPTS = 5


def finite_or_none(value: float | None) -> float | None:
    """The value, or None where it is missing or not finite (as the JSON shows it)."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class SpecOutcome:
    """One SPEC over all steps, as the reports show it.

    Attributes:
        steps: the step numbers of ``step_summaries``.
        total, step_summaries: the engine's summary over all steps and of each step.
        length_quartiles, length_deciles, difficulty: what the SPEC gives each bucket (difficulty:
            None without uids or rewards).
        advantage_sign: its gradient mass on positive and negative advantages.
        prompt_concentration: how concentrated its gradient mass is across prompts.
        zero_grad: cause -> loss tokens with no gradient (``check``'s accounting, plus ``SKYRL_CUT_CAUSE``
            where ``trainer_zeroed`` is not 0).
        checks: what ``check`` reports under the SPEC's layout, for the SPEC's own mode (``CheckReport.for_mode``).
        updates_per_step: the optimizer updates (mini-batches) of each step under its layout.
        trainer_zeroed: per step, the loss tokens the trainer in use trains at weight 0 although the
            SPEC's weights give them a gradient (``trainer_zeroed_per_step``); empty: none.
    """

    steps: list[int]
    total: ModeSummary
    step_summaries: list[ModeSummary]
    length_quartiles: BucketShares
    length_deciles: BucketShares
    difficulty: BucketShares | None
    advantage_sign: SignShares
    prompt_concentration: Concentration
    zero_grad: dict[str, int]
    checks: CheckReport
    updates_per_step: list[int]
    trainer_zeroed: tuple[int, ...] = ()

    @property
    def trainer_zeroed_tokens(self) -> int:
        """Loss tokens the trainer in use trains at weight 0 where the SPEC's weights give them a gradient."""
        return sum(self.trainer_zeroed)

    @property
    def no_gradient_tokens(self) -> int:
        """Loss tokens whose gradient weight is zero or not finite, plus those the trainer in use trains at 0."""
        return self.total.zero_grad_tokens + self.total.nonfinite_grad_tokens + self.trainer_zeroed_tokens

    def no_gradient_in_step(self, index: int) -> int:
        """``no_gradient_tokens`` of the ``index``-th step."""
        summary = self.step_summaries[index]
        zeroed = self.trainer_zeroed[index] if self.trainer_zeroed else 0
        return summary.zero_grad_tokens + summary.nonfinite_grad_tokens + zeroed

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total.to_dict(),
            "no_gradient_tokens": self.no_gradient_tokens,
            "trainer_zeroed_tokens": self.trainer_zeroed_tokens,
            "trainer_zeroed_per_step": list(self.trainer_zeroed),
            "steps": [{"step": step, **summary.to_dict()} for step, summary in zip(self.steps, self.step_summaries, strict=True)],
            "length_quartiles": self.length_quartiles.to_dict(),
            "length_deciles": self.length_deciles.to_dict(),
            "difficulty": None if self.difficulty is None else self.difficulty.to_dict(),
            "advantage_sign": self.advantage_sign.to_dict(),
            "prompt_concentration": self.prompt_concentration.to_dict(),
            "zero_grad": self.zero_grad,
            "checks": _check_dict(self.checks),
            "updates_per_step": self.updates_per_step,
        }


REPORT_FINDINGS_PER_CODE = 1000  # report.json keeps this many findings of each code (and cut prompts of each level)


def report_findings_omitted(report: CheckReport) -> dict[str, int]:
    """code -> findings report.json leaves out under ``REPORT_FINDINGS_PER_CODE`` (empty when none are)."""
    counts = Counter(f.code for f in report.findings)
    return {code: n - REPORT_FINDINGS_PER_CODE for code, n in counts.items() if n > REPORT_FINDINGS_PER_CODE}


def _check_dict(report: CheckReport) -> dict[str, Any]:
    """The part of ``check --json`` a report keeps per SPEC, and how many prompts each level cuts.

    At most ``REPORT_FINDINGS_PER_CODE`` findings of each code and cut prompts of each level: an
    input with a finding per prompt (10^6 rows of empty lists) made a report.json of gigabytes. The
    counts stay whole; ``findings_omitted`` (only where some are left out) says how many are out.
    """
    seen: Counter[str] = Counter()
    kept = []
    for finding in report.findings:
        seen[finding.code] += 1
        if seen[finding.code] <= REPORT_FINDINGS_PER_CODE:
            kept.append(finding.to_dict())
    checks = {
        "modes": report.modes,
        "counts": report.counts(),
        "findings": kept,
        "cut_prompts": {
            level: [{"step": step, "uid": uid} for step, uid in pairs[:REPORT_FINDINGS_PER_CODE]]
            for level, pairs in report.cut_prompts.items()
        },
        "cut_prompt_counts": {level: len(pairs) for level, pairs in report.cut_prompts.items()},
        "notes": report.notes,
    }
    omitted = report_findings_omitted(report)
    if omitted:
        checks["findings_omitted"] = omitted
    return checks


@dataclass(frozen=True)
class Shift:
    """How the share of gradient mass per bucket moves from the base to a candidate.

    Attributes:
        base_share, candidate_share: ``[k]`` share per bucket under each SPEC (NaN: no mass).
        change_points: ``[k]`` ``100 * (candidate_share - base_share)``.
    """

    base_share: np.ndarray
    candidate_share: np.ndarray
    change_points: np.ndarray

    @classmethod
    def between(cls, base: BucketShares | None, candidate: BucketShares | None) -> Shift | None:
        if base is None or candidate is None:
            return None
        before, after = base.grad_mass_share, candidate.grad_mass_share
        return cls(before, after, 100 * (after - before))

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_share": self.base_share.tolist(),
            "candidate_share": self.candidate_share.tolist(),
            "change_points": self.change_points.tolist(),
        }


@dataclass(frozen=True)
class EssChange:
    """The effective number of tokens under the base and a candidate (None: not finite)."""

    base: float | None
    candidate: float | None
    relative_change: float | None

    @classmethod
    def between(cls, base: ModeSummary, candidate: ModeSummary) -> EssChange:
        before, after = finite_or_none(base.ess_tokens), finite_or_none(candidate.ess_tokens)
        return cls(before, after, (after / before - 1.0) if before and after is not None else None)


@dataclass(frozen=True)
class Change:
    """What moving from the base SPEC to a candidate changes.

    Attributes:
        length_quartiles, length_deciles, difficulty: how the shares per bucket move (difficulty:
            None without uids or rewards).
        advantage_sign: the sign shares under the base and under the candidate.
        weight_ratio: quantiles over loss tokens of ``w_candidate / w_base`` (``ratio_quantiles``).
        zero_grad_tokens: loss tokens with no gradient under the base and under the candidate.
        prompts_gaining, prompts_losing: the prompts whose share of their step's weight grows and
            shrinks the most (None without uids).
    """

    base: str
    candidate: str
    length_quartiles: Shift | None
    length_deciles: Shift | None
    difficulty: Shift | None
    advantage_sign: tuple[SignShares, SignShares]
    ess_tokens: EssChange
    weight_ratio: dict[str, float | None]
    zero_grad_tokens: tuple[int, int]
    prompts_gaining: list[PromptMove] | None
    prompts_losing: list[PromptMove] | None

    def to_dict(self) -> dict[str, Any]:
        def moves(entries: list[PromptMove] | None) -> list[dict[str, Any]] | None:
            return None if entries is None else [entry.to_dict() for entry in entries]

        def shift(value: Shift | None) -> dict[str, Any] | None:
            return None if value is None else value.to_dict()

        sign_before, sign_after = self.advantage_sign
        return {
            "base": self.base,
            "candidate": self.candidate,
            "length_quartiles": shift(self.length_quartiles),
            "length_deciles": shift(self.length_deciles),
            "difficulty": shift(self.difficulty),
            "advantage_sign": {"base": sign_before.to_dict(), "candidate": sign_after.to_dict()},
            "ess_tokens": {
                "base": self.ess_tokens.base,
                "candidate": self.ess_tokens.candidate,
                "relative_change": self.ess_tokens.relative_change,
            },
            "weight_ratio": self.weight_ratio,
            "zero_grad_tokens": {"base": self.zero_grad_tokens[0], "candidate": self.zero_grad_tokens[1]},
            "prompts_gaining": moves(self.prompts_gaining),
            "prompts_losing": moves(self.prompts_losing),
        }


@dataclass(frozen=True)
class Comparison:
    """Every SPEC's outcome and every candidate's change against the base (the first SPEC).

    Attributes:
        length_quartiles, length_deciles: rows in 4 and 10 equal-count length slices.
        difficulty: rows by their prompt's difficulty, or None without uids or rewards.
        outcomes: SPEC label -> its outcome, in SPEC order.
        changes: one per candidate (every SPEC after the first), in SPEC order.
        coincide: groups of SPECs whose weights are the same up to one factor per optimizer update.
    """

    specs: list[Spec]
    length_quartiles: Buckets
    length_deciles: Buckets
    difficulty: Buckets | None
    outcomes: dict[str, SpecOutcome]
    changes: list[Change]
    coincide: list[Coincidence]

    @property
    def base(self) -> str:
        return self.specs[0].label

    def shown_as(self, label: str) -> str:
        """The SPEC a report shows for ``label``: the first of its coinciding group, else itself."""
        return next((group.labels[0] for group in self.coincide if label in group.labels), label)


def trainer_zeroed_per_step(checks: CheckReport, mode: str, steps: Sequence[int]) -> tuple[int, ...]:
    """Per step of ``steps``, the loss tokens the trainer ``checks`` ran with trains at weight 0 although
    ``mode``'s weights give them a gradient, or ``()`` when there are none.

    Only SkyRL under ``prompt_mean``: SkyRL's prompt_mean takes the prompts whose first row lies in a
    mini-batch and leaves the rows of a prompt cut by that mini-batch's end at weight 0 (SkyRL 0.4.0
    ``trainer._normalize_advantages``); aggscope's ``prompt_mean`` is the canonical one, which gives
    them their share in the next mini-batch. SkyRL's own mini-batches are whole prompts, so this is
    non-zero only under a layout that cuts one (a SPEC's or a flag's mini-batch size). With the trainer
    unknown, ``check`` says a boundary-based prompt_mean *would* do this and nothing is counted.
    """
    if mode != "prompt_mean" or checks.options.trainer not in BOUNDARY_TRAINERS:
        return ()
    by_step = {entry.step: entry.boundary_zeroed_tokens for entry in checks.steps}
    counts = tuple(by_step.get(step, 0) for step in steps)
    return counts if any(counts) else ()


def compare_specs(breakdown: Breakdown, min_rows_per_bucket: int = MIN_ROWS_PER_BUCKET) -> Comparison:
    """Group the breakdown once and compare every SPEC after the first against the first.

    ``min_rows_per_bucket``: a length bucket holds at least this many responses (fewer buckets
    when there are few).
    """
    quartiles = breakdown.length_buckets(4, min_rows_per_bucket)
    deciles = breakdown.length_buckets(10, min_rows_per_bucket)
    difficulty = breakdown.difficulty_buckets()
    zero_grad = breakdown.zero_grad_causes()
    outcomes = {}
    for spec in breakdown.specs:
        result = breakdown.results[spec.label]
        checks = breakdown.checks[spec.layout].for_mode(spec.mode.name)  # the SPEC's own findings
        zeroed = trainer_zeroed_per_step(checks, spec.mode.name, breakdown.steps)
        causes = dict(zero_grad[spec.label])
        if zeroed:
            causes[SKYRL_CUT_CAUSE] = sum(zeroed)
        outcomes[spec.label] = SpecOutcome(
            steps=breakdown.steps,
            total=result.total,
            step_summaries=result.steps,
            length_quartiles=quartiles.shares(spec.label),
            length_deciles=deciles.shares(spec.label),
            difficulty=None if difficulty is None else difficulty.shares(spec.label),
            advantage_sign=SignShares.of(result.total),
            prompt_concentration=breakdown.concentration(spec.label),
            zero_grad=causes,
            checks=checks,
            updates_per_step=updates_per_step(breakdown, spec.label),
            trainer_zeroed=zeroed,
        )
    base = breakdown.specs[0]
    changes = [_change(breakdown, base, candidate, outcomes) for candidate in breakdown.specs[1:]]
    return Comparison(list(breakdown.specs), quartiles, deciles, difficulty, outcomes, changes, coincidences(breakdown))


def _change(breakdown: Breakdown, base: Spec, candidate: Spec, outcomes: dict[str, SpecOutcome]) -> Change:
    before, after = outcomes[base.label], outcomes[candidate.label]
    moves = breakdown.prompt_moves(base.label, candidate.label, TOP_PROMPTS)
    return Change(
        base=base.label,
        candidate=candidate.label,
        length_quartiles=Shift.between(before.length_quartiles, after.length_quartiles),
        length_deciles=Shift.between(before.length_deciles, after.length_deciles),
        difficulty=Shift.between(before.difficulty, after.difficulty),
        advantage_sign=(before.advantage_sign, after.advantage_sign),
        ess_tokens=EssChange.between(before.total, after.total),
        weight_ratio=breakdown.ratio_quantiles(base.label, candidate.label, RATIO_QUANTILES),
        zero_grad_tokens=(before.no_gradient_tokens, after.no_gradient_tokens),
        prompts_gaining=None if moves is None else moves[0],
        prompts_losing=None if moves is None else moves[1],
    )


def ratio_keys(quantiles: Sequence[float] = RATIO_QUANTILES) -> list[str]:
    """The keys of the quantiles in ``Change.weight_ratio``: ``p1``, ``p10``, ..."""
    return [f"p{round(q * 100)}" for q in quantiles]
