"""The opening sentences of a report: what the input is, what gets no gradient, the biggest changes.

The sentences are part of ``report.json``, so the way they write numbers is fixed here: shares with
one decimal (``52.5%``), changes in signed points (``−30.1 points``), counts with separators.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from aggscope import fmt
from aggscope.analysis.breakdown import Buckets, Change

if TYPE_CHECKING:  # the document imports this module to write its sentences
    from aggscope.present.report.document import ReportDocument

# A change smaller than this (in points of share, or percent for ESS) is not worth a sentence.
SENTENCE_THRESHOLD = 0.5
MAX_SENTENCES = 4
# The kinds of change a summary sentence can state, most important first.
SENTENCE_KINDS = ("lost_gradient", "check_errors", "length", "sign", "difficulty", "ess")
QUARTILE_NAMES = ("shortest quarter", "second-shortest quarter", "second-longest quarter", "longest quarter")
DIFFICULTY_TEXT = {
    "hard": "hard prompts (group mean reward in the lowest third of the reward range)",
    "medium": "medium prompts (group mean reward in the middle third)",
    "easy": "easy prompts (group mean reward in the top third)",
    "unscored": "prompts with no finite reward",
}


def share_text(share: float) -> str:
    """A share as the sentences write it, ``52.5%``.

    Not ``fmt.percent``: that writes a share below 0.05% as ``<0.1%``, and these sentences are in
    ``report.json``, whose text must not change.
    """
    return f"{100 * share:.1f}%"


def points(change: float | None) -> str:
    """A change of share in signed points, ``+18.4 points`` / ``−30.1 points`` (``–``: missing)."""
    if change is None or not math.isfinite(change):
        return fmt.MISSING
    return f"{change:+.1f} points".replace("-", "−")


def token_span(buckets: Buckets, i: int) -> str:
    """The loss tokens of bucket ``i``'s shortest and longest row, ``14–126`` (one number when equal)."""
    low, high = int(buckets.min_tokens[i]), int(buckets.max_tokens[i])
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def summary_sentences(document: ReportDocument) -> list[str]:
    """A few plain sentences: what the input is, what gets no gradient, the biggest changes."""
    source = document.input
    base = document.base
    prompts = "" if source.prompts is None else f" to {source.prompts:,} prompts"
    steps = len(source.steps)
    sentences = [
        f"{source.source}: {steps} step{'s' * (steps != 1)}, {source.sequences:,} responses{prompts}, "
        f"{source.loss_tokens:,} loss tokens."
    ]
    if source.lengths_estimated:
        sentences.append(
            "Response lengths are estimated from the text (the input has no token counts): every length and "
            "per-token number here is an estimate; give --tokenizer to count real tokens."
        )
    sentences.append(_zero_grad_sentence(document, base))
    checks = document.results[base].checks
    where = "" if document.kind == "report" else f" under the {base} layout"
    counted = [(severity, n) for severity, n in checks.counts().items() if n]
    if counted:
        listed = ", ".join(f"{n} {severity}{'s' * (n != 1)}" for severity, n in counted)
        codes = Counter(finding.code for finding in checks.findings)  # findings come worst first
        detail = ", ".join(f"{code} ×{n}" for code, n in list(codes.items())[:3])
        sentences.append(f"check finds {listed}{where}: {detail} (see Findings).")
    else:
        sentences.append(f"check finds nothing to report{where}.")
    opening = len(sentences)
    per_change = [_change_sentences(document, change) for change in document.changes]
    if document.kind == "compare":
        # Each candidate: its changes in order of importance (lost gradient, check errors, length, ...).
        per_candidate = max(2, MAX_SENTENCES // len(per_change))
        for change, found in zip(document.changes, per_change, strict=True):
            picked = [found[kind][1] for kind in SENTENCE_KINDS if kind in found and found[kind][0] >= SENTENCE_THRESHOLD]
            if not picked:
                picked = [f"{change.candidate} gives the same distribution of gradient as {base} on this input."]
            sentences += picked[:per_candidate]
    else:
        # Every mode against the base: for each kind of change, the mode that changes most.
        for kind in SENTENCE_KINDS:
            candidates = [found[kind] for found in per_change if kind in found and found[kind][0] >= SENTENCE_THRESHOLD]
            if candidates:
                sentences.append(max(candidates, key=lambda item: item[0])[1])
            if len(sentences) >= opening + MAX_SENTENCES:
                break
    return sentences


def _zero_grad_sentence(document: ReportDocument, base: str) -> str:
    result = document.results[base]
    loss_tokens = max(document.input.loss_tokens, 1)
    none = result.no_gradient_tokens
    text = f"{100 * none / loss_tokens:.1f}% of loss tokens ({none:,}) get no gradient under {base}"
    causes = {cause: n for cause, n in result.zero_grad.items() if n}
    if causes:
        cause, tokens = max(causes.items(), key=lambda item: item[1])
        text += f"; the largest cause is {cause.replace('_', ' ')} ({100 * tokens / loss_tokens:.1f}% of loss tokens)"
    return text + "."


def _change_sentences(document: ReportDocument, change: Change) -> dict[str, tuple[float, str]]:
    """Sentences about one change, by kind, with their size (points of share, or percent for ESS)."""
    base, candidate = change.base, change.candidate
    out: dict[str, tuple[float, str]] = {}
    length = _length_sentence(document, change)
    if length is not None:
        out["length"] = length
    ess = change.ess_tokens
    if ess.relative_change is not None and ess.base is not None and ess.candidate is not None:
        out["ess"] = (
            abs(100 * ess.relative_change),
            f"The effective number of tokens (Σw)²/Σw² goes from {ess.base:,.0f} under {base} to "
            f"{ess.candidate:,.0f} under {candidate} ({100 * ess.relative_change:+.1f}%).".replace("(-", "(−"),
        )
    sign_before, sign_after = change.advantage_sign
    before, after = sign_before.positive_share, sign_after.positive_share
    if before is not None and after is not None:
        out["sign"] = (
            abs(100 * (after - before)),
            f"Under {candidate}, tokens with a positive advantage get {share_text(after)} of the gradient mass "
            f"instead of {share_text(before)} under {base} ({points(100 * (after - before))}).",
        )
    difficulty = _difficulty_sentence(document, change)
    if difficulty is not None:
        out["difficulty"] = difficulty
    zero_before, zero_after = change.zero_grad_tokens
    if zero_after != zero_before:
        size = abs(100 * (zero_after - zero_before) / max(document.input.loss_tokens, 1))
        out["lost_gradient"] = (
            max(size, 100.0),  # tokens losing all gradient always make the summary
            f"{candidate} leaves {zero_after:,} loss tokens with no gradient, against {zero_before:,} under {base}.",
        )
    check = _check_sentence(document, base, candidate)
    if check is not None:
        out["check_errors"] = check
    return out


def _length_sentence(document: ReportDocument, change: Change) -> tuple[float, str] | None:
    """The length quarters that lose and gain the most gradient mass."""
    quartiles = change.length_quartiles
    if quartiles is None:
        return None
    delta = quartiles.change_points.astype(float)
    if not np.isfinite(delta).all():
        return None
    loser, gainer = int(np.argmin(delta)), int(np.argmax(delta))
    bounds = document.comparison.length_quartiles

    def quarter(i: int) -> str:
        return f"the {QUARTILE_NAMES[i]} of responses ({token_span(bounds, i)} loss tokens)"

    before, after = quartiles.base_share, quartiles.candidate_share
    text = (
        f"Moving from {change.base} to {change.candidate} gives {quarter(loser)} {share_text(after[loser])} of the "
        f"gradient mass instead of {share_text(before[loser])} ({points(delta[loser])}), and {quarter(gainer)} "
        f"{share_text(after[gainer])} instead of {share_text(before[gainer])} ({points(delta[gainer])})."
    )
    return float(max(-delta[loser], delta[gainer])), text


def _difficulty_sentence(document: ReportDocument, change: Change) -> tuple[float, str] | None:
    """The prompt difficulty whose share of gradient mass moves the most."""
    difficulty, buckets = change.difficulty, document.comparison.difficulty
    if difficulty is None or buckets is None:
        return None
    delta = difficulty.change_points.astype(float)
    if not np.isfinite(delta).any():
        return None
    biggest = int(np.nanargmax(np.abs(delta)))
    return (
        abs(float(delta[biggest])),
        f"Under {change.candidate}, {DIFFICULTY_TEXT[buckets.names[biggest]]} get "
        f"{share_text(difficulty.candidate_share[biggest])} of the gradient mass instead of "
        f"{share_text(difficulty.base_share[biggest])} under {change.base} ({points(float(delta[biggest]))}).",
    )


def _check_sentence(document: ReportDocument, base: str, candidate: str) -> tuple[float, str] | None:
    """What check finds under the candidate's layout that it does not under the base's (errors)."""
    before, after = document.results[base].checks, document.results[candidate].checks
    errors_before, errors_after = before.counts()["error"], after.counts()["error"]
    if errors_after == errors_before:
        return None
    codes = sorted({finding.code for finding in after.findings if finding.severity == "error"})
    text = (
        f"Under the {candidate} layout check finds {errors_after} error{'s' * (errors_after != 1)} "
        f"({', '.join(codes)}), against {errors_before} under {base}"
    )
    silent = [finding for finding in after.findings if finding.code == "silent_zero_advantage"]
    if silent:
        tokens = sum(finding.tokens for finding in silent)
        text += (
            f": a boundary-based prompt_mean (SkyRL's) would leave {tokens:,} loss tokens of {len(silent)} cut "
            f"prompt{'s' * (len(silent) != 1)} with no gradient"
        )
    return (100.0, text + ".")
