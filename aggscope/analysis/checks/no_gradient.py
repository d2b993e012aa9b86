"""``no_gradient_share``: the share of loss tokens that get no gradient, per step and over the run.

A loss token gets no gradient when ``w_i * A`` is 0 or not finite; ``zero_grad_causes`` gives each
such token one cause. ``NoGradThresholds`` turns the share into a severity (``--max-no-grad-share``):
a warning above ``warning``, an error above ``error``, and always an error at 100% (a step, or a
run, that learns nothing). Modes with the same accounting share one finding; a finding names its
modes only when they are not all the selected ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aggscope.analysis.check_settings import NoGradThresholds
from aggscope.analysis.checks.catalogue import ZERO_GRAD_CAUSES, Finding
from aggscope.fmt import number, percent, plural

ADVICE = {
    "zero_variance_group": (
        "every sample of those prompts got the same reward, so a group baseline leaves no signal. Filter such "
        "groups with dynamic sampling (DAPO; verl algorithm.filter_groups.enable=true) or sample more responses per "
        "prompt; train on prompts the model solves only sometimes (harder ones if all succeed, easier ones if all "
        "fail); and when every reward is the same value, check the reward function on a few responses by hand: a "
        "reward bug looks exactly like this."
    ),
    "reward_at_group_mean": (
        "those rows' rewards equal their group's mean, so the group baseline gives them advantage 0: a reward with "
        "few levels makes this common; a finer-grained reward gives them signal."
    ),
    "zero_advantage": (
        "their advantages are 0 although their groups' rewards vary: an advantage zeroed after the estimator "
        "(see the zero_advantage findings)."
    ),
    "nonfinite_advantage": "their advantages are NaN or infinite (see nonfinite_advantage): fix them at the source.",
    "zero_weight": "the mode gives those rows weight 0: check the mode and layout.",
    "nonfinite_weight": "the mode gives those rows a non-finite weight: check the mode and layout.",
}


def same_accounting(zero_grad: Mapping[str, Mapping[str, int]]) -> list[tuple[tuple[str, ...], dict[str, int]]]:
    """The modes grouped by identical ``{cause: tokens}``, in mode order."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for mode, causes in zero_grad.items():
        groups.setdefault(tuple(causes[c] for c in ZERO_GRAD_CAUSES), []).append(mode)
    return [(tuple(modes), dict(zip(ZERO_GRAD_CAUSES, key, strict=True))) for key, modes in groups.items()]


def no_gradient_findings(
    step: int | None,
    loss_tokens: int,
    zero_grad: Mapping[str, Mapping[str, int]],
    thresholds: NoGradThresholds,
    *,
    rows: Mapping[tuple[str, ...], tuple[int, ...]] | None = None,
    detail: Mapping[str, str] | None = None,
) -> list[Finding]:
    """``no_gradient_share`` findings of one step (``step``) or of the whole run (``step`` None).

    Args:
        step: the step, or None over the run.
        loss_tokens: loss tokens of the step or run.
        zero_grad: ``{mode: {cause: tokens}}``.
        thresholds: when the share is a warning or an error.
        rows: ``{modes: rows with a token without gradient}`` per accounting, where known.
        detail: ``{cause: words}`` added after a cause's share (e.g. which groups).
    """
    if loss_tokens == 0:
        return []
    findings = []
    accounting = same_accounting(zero_grad)
    for modes, causes in accounting:
        tokens = sum(causes.values())
        severity = thresholds.severity(tokens / loss_tokens)
        if severity is None:
            continue
        named = modes if len(accounting) > 1 else ()
        message = no_gradient_message(step, loss_tokens, causes, named, detail or {})
        found_rows = (rows or {}).get(modes, ())
        findings.append(Finding("no_gradient_share", severity, step, None, found_rows, tokens, message, named))
    return findings


def no_gradient_message(
    step: int | None, loss_tokens: int, causes: Mapping[str, int], modes: Sequence[str], detail: Mapping[str, str]
) -> str:
    """The message: the share, the causes (largest first), the dominant cause and what to do."""
    tokens = sum(causes.values())
    where = "over the run" if step is None else "in this step"
    under = f"under {', '.join(modes)}" if modes else "under every mode"
    ranked = sorted((c for c in ZERO_GRAD_CAUSES if causes[c]), key=lambda c: -causes[c])
    parts = [f"{c} {number(causes[c])} ({percent(causes[c] / loss_tokens)}){detail.get(c, '')}" for c in ranked]
    dominant = ranked[0]
    verdict = "nothing is learnt from it" if tokens == loss_tokens else "that part of the data teaches nothing"
    return (
        f"{number(tokens)} of {plural(loss_tokens, 'loss token')} {where} ({percent(tokens / loss_tokens)}) get no "
        f"gradient (w x A is 0 or not finite) {under}, so {verdict}. Causes: {'; '.join(parts)}. Mostly "
        f"{dominant}: {ADVICE[dominant]}"
    )
