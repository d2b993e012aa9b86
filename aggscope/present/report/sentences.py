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
from aggscope.analysis.breakdown.groups import Coincidence
from aggscope.present.report.headline import SENTENCE_THRESHOLD, HeadlineItem, spec_layout_given

if TYPE_CHECKING:  # the document imports this module to write its sentences
    from aggscope.present.report.document import ReportDocument

MAX_SENTENCES = 4
# The kinds of change a summary sentence can state, most important first.
SENTENCE_KINDS = ("lost_gradient", "check_errors", "length", "sign", "difficulty", "ess")
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


def headline_items(document: ReportDocument) -> list[HeadlineItem]:
    """Every change of every shown candidate against the base, largest first.

    A candidate that coincides with the base, or with a SPEC before it, is left out: the
    coincidence sentence says so once.
    """
    items = []
    shown = set(_shown_candidates(document))
    for change in document.changes:
        if change.candidate not in shown:
            continue
        for kind, (size, sentence) in _change_sentences(document, change).items():
            items.append(HeadlineItem(kind, change.candidate, size, sentence, size < SENTENCE_THRESHOLD))
    kind_rank = {kind: i for i, kind in enumerate(SENTENCE_KINDS)}
    # Shares move in points, the effective number of tokens in percent: the two are not compared,
    # so ESS changes rank after the moves of gradient mass.
    return sorted(items, key=lambda item: (item.kind == "ess", -item.size, kind_rank[item.kind]))


def _shown_candidates(document: ReportDocument) -> list[str]:
    """The candidates the summary speaks of: those that do not coincide with the base or an earlier SPEC."""
    return [spec.label for spec in document.shown_specs if spec.label != document.base]


def summary_sentences(document: ReportDocument) -> list[str]:
    """A few plain sentences: what the input is and gets no gradient, which modes coincide, the biggest changes."""
    sentences = _input_sentences(document)
    sentences += _layout_sentences(document)
    items = headline_items(document)
    stated = [item for item in items if not item.negligible]
    picked: list[HeadlineItem] = []
    if document.kind == "compare":
        # Every candidate gets at least its largest change, then the largest of the rest.
        for change in document.changes:
            own = [item for item in stated if item.candidate == change.candidate]
            picked += own[:1]
        picked += [item for item in stated if item not in picked][: max(0, MAX_SENTENCES - len(picked))]
        picked.sort(key=items.index)
    else:
        picked = stated[:MAX_SENTENCES]
    sentences += [item.sentence for item in picked]
    more = len(stated) - len(picked)
    if more > 0:
        sentences.append(f"{more} smaller change{'s' * (more != 1)} of at least {SENTENCE_THRESHOLD:g} point are in Changes.")
    negligible = [item for item in items if item.negligible]
    if negligible:
        listed = ", ".join(f"{item.candidate} {KIND_TEXT[item.kind]} ({_size_text(item)})" for item in negligible[:6])
        extra = "" if len(negligible) <= 6 else f" and {len(negligible) - 6} more"
        sentences.append(f"Negligible (under {SENTENCE_THRESHOLD:g} point): {listed}{extra}.")
    silent = [label for label in _shown_candidates(document) if not any(item.candidate == label for item in items)]
    sentences += [f"{label} gives the same distribution of gradient as {document.base} on this input." for label in silent]
    return sentences


KIND_TEXT = {
    "lost_gradient": "tokens with no gradient",
    "check_errors": "check errors",
    "length": "length shift",
    "sign": "advantage-sign shift",
    "difficulty": "difficulty shift",
    "ess": "effective tokens",
}


def _size_text(item: HeadlineItem) -> str:
    return f"{item.size:.1f}%" if item.kind == "ess" else f"{item.size:.1f} points"


def _input_sentences(document: ReportDocument) -> list[str]:
    """What the input is, what gets no gradient under the base, what check finds there."""
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
    return sentences


def _layout_sentences(document: ReportDocument) -> list[str]:
    """Which SPECs coincide and why, whether a layout was given, and changes in updates and total weight."""
    out = [coincide_sentence(document, group) for group in document.comparison.coincide]
    if not any(spec_layout_given(spec.spec.layout) for spec in document.specs):
        out.append(NO_LAYOUT_SENTENCE)
    updates = {label: outcome.updates_per_step for label, outcome in document.results.items()}
    base_updates = updates[document.base]
    differing = [spec.label for spec in document.specs if updates[spec.label] != base_updates]
    if differing:
        listed = ", ".join(f"{_per_step(updates[label])} under {label}" for label in differing)
        out.append(f"Optimizer updates per step: {_per_step(base_updates)} under {document.base}, {listed}.")
    per_update = {spec.label: _weight_per_update(document, spec.label) for spec in document.specs}
    base_weight = per_update[document.base]
    scaled = [label for label, weight in per_update.items() if not math.isclose(weight, base_weight, rel_tol=1e-6)]
    if scaled and math.isfinite(base_weight) and base_weight > 0:
        listed = ", ".join(f"{fmt.number(per_update[label])} under {label}" for label in scaled)
        out.append(
            f"Total weight Σw per optimizer update: {fmt.number(base_weight)} under {document.base}, {listed} "
            "(the size of each update: plain SGD takes it as it is, Adam normalizes most of it away)."
        )
    return out


NO_LAYOUT_SENTENCE = (
    "No layout was given, so each step is one optimizer update on one rank without micro-batches; give "
    "--mini-batch-size, --micro-batch-size and --dp-size (or --config) to see the prompts the trainer's cuts split "
    "and what they change for token_mean_legacy and SkyRL's prompt_mean."
)


def _weight_per_update(document: ReportDocument, label: str) -> float:
    """The SPEC's total weight over the run divided by its optimizer updates."""
    outcome = document.results[label]
    return outcome.total.weight_sum / max(sum(outcome.updates_per_step), 1)


def _per_step(updates: list[int]) -> str:
    low, high = min(updates, default=0), max(updates, default=0)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def coincide_sentence(document: ReportDocument, group: Coincidence) -> str:
    """One sentence saying that the SPECs of ``group`` coincide under their layout, and why."""
    names = group.labels
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    if group.identical:
        why = "they give every loss token the same weight"
    elif group.uniform:
        why = (
            "each gives every loss token of an optimizer update the same weight, so each update points the same way "
            "and only its size differs"
        )
    else:
        why = "their weights differ by one factor per optimizer update, so each update points the same way and only its size differs"
    return f"{listed} coincide under this layout: {why}; shown once, as {names[0]}."


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
        return length_bucket_text(bounds, i)

    before, after = quartiles.base_share, quartiles.candidate_share
    text = (
        f"Moving from {change.base} to {change.candidate} gives {quarter(loser)} {share_text(after[loser])} of the "
        f"gradient mass instead of {share_text(before[loser])} ({points(delta[loser])}), and {quarter(gainer)} "
        f"{share_text(after[gainer])} instead of {share_text(before[gainer])} ({points(delta[gainer])})."
    )
    return float(max(-delta[loser], delta[gainer])), text


def length_bucket_text(buckets: Buckets, i: int) -> str:
    """A length bucket in words: ``the longest 25.0% of responses (434–1,024 loss tokens)``.

    Ties are never split, so a bucket is not always a quarter: its share of responses is stated.
    """
    nonempty = buckets.nonempty
    share = share_text(float(buckets.rows[i]) / max(int(buckets.rows.sum()), 1))
    if nonempty and i == nonempty[-1]:
        where = f"the longest {share} of responses"
    elif nonempty and i == nonempty[0]:
        where = f"the shortest {share} of responses"
    else:
        return f"the {share} of responses with {token_span(buckets, i)} loss tokens"
    return f"{where} ({token_span(buckets, i)} loss tokens)"


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
    prompts = f"{len(silent)} cut prompt{'s' * (len(silent) != 1)}"
    outcome = document.results[candidate]
    if outcome.trainer_zeroed_tokens:  # the trainer is SkyRL: the column counts what it trains at 0
        text += (
            f": SkyRL's boundary-based prompt_mean leaves {outcome.trainer_zeroed_tokens:,} loss tokens with a non-zero "
            f"advantage in {prompts} with no gradient, counted in {candidate}'s {outcome.no_gradient_tokens:,} loss "
            "tokens with no gradient"
        )
    elif silent:  # the trainer is unknown: it may be SkyRL
        tokens = sum(finding.tokens for finding in silent)
        text += f": a boundary-based prompt_mean (SkyRL's) would leave {tokens:,} loss tokens of {prompts} with no gradient"
    return (100.0, text + ".")
