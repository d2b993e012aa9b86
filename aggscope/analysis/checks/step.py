"""The findings of one step: ``check_one`` makes a ``StepCheck`` (findings, cut prompts, zero-gradient
causes) from the slices ``stacked.check_steps`` computed for the step.

Row-level findings (``_RowFindings``), group-level findings, non-contiguous uids and cut prompts
are found here; the boundary-based prompt_mean findings come from ``boundary`` and the safe
mini-batch sizes from ``safe_sizes``. All the work is vectorised over rows; Python loops run only
over findings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from aggscope.analysis.check_settings import CheckOptions
from aggscope.analysis.checks.boundary import boundary_prompt_mean_findings, boundary_zeroed_tokens
from aggscope.analysis.checks.catalogue import CODES, CUT_CODES, CUT_LEVELS, SEQUENCE_DENOMINATOR_MODES, Finding
from aggscope.analysis.checks.messages import check_command, cut_message, has_or_have, who
from aggscope.analysis.checks.no_gradient import no_gradient_findings, same_accounting
from aggscope.analysis.checks.quantities import Groups, Rows, host_float64
from aggscope.analysis.checks.safe_sizes import SafeSizes, safe_chunk_sizes
from aggscope.analysis.checks.truncation import cap_hint, truncated_findings
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.split import Split
from aggscope.fmt import plural, row_ranges

_NO_UID_NOTE = (
    "no uid column: prompt cuts, group checks, zero_advantage and the boundary prompt_mean check need one "
    "(set it with --col uid=NAME)"
)
_NO_PROMPT_MEAN_NOTE = (
    "the boundary prompt_mean checks (silent_zero_advantage, rebased_prompt_mean_misweight) run only with "
    "prompt_mean among the modes"
)
_NOT_SKYRL_NOTE = (
    "the boundary prompt_mean checks (silent_zero_advantage, rebased_prompt_mean_misweight) and noncontiguous_uid "
    "model SkyRL; the trainer here is {trainer}, so they do not run"
)


@dataclass(frozen=True, eq=False)
class StepLanes:
    """What the text picture of a step's split needs; arrays are ``[n_seqs]`` by trainer position,
    grouped by mini-batch (the same order under the canonical composition).

    Attributes:
        prompt: prompt number by first appearance in trainer order.
        mini_batch: mini-batch of each position.
        rank: rank shard (within its mini-batch) of each position.
        cut_by_mini_batch: the position's prompt is cut by a mini-batch boundary.
        no_gradient: the position is a ``silent_zero_advantage`` row.
    """

    step: int
    prompt: np.ndarray
    mini_batch: np.ndarray
    rank: np.ndarray
    cut_by_mini_batch: np.ndarray
    no_gradient: np.ndarray
    n_mini_batches: int
    dp_size: int


@dataclass(frozen=True, eq=False)
class StepCheck:
    """The checks of one step, ready to merge with other steps.

    Messages of ``prompt_cut_by_mini_batch`` and ``silent_zero_advantage`` get their advice (mini-batch
    sizes that cut no prompt of the whole data) when merged by ``CheckAccumulator``; merge the steps of
    a run through it, even when they were checked elsewhere (the object pickles).

    Attributes:
        cut_prompts: ``{level: uids cut at that level}`` for every level in ``CUT_LEVELS``.
        zero_grad: ``{mode: {cause: loss tokens}}``.
        safe: the mini-batch sizes that cut no prompt of this step (None when the layout has no
            mini-batch size or there is no uid).
        group_sizes: ``{group size: number of prompts}``.
        notes: remarks on checks that could not run.
        lengths_estimated: the step's token counts were estimated from text.
        boundary_zeroed_tokens: loss tokens that get a gradient under the canonical ``prompt_mean`` and
            none under the boundary-based one (SkyRL's; 0 when that check did not run).
    """

    step: int
    sequences: int
    loss_tokens: int
    findings: tuple[Finding, ...]
    cut_prompts: dict[str, tuple[str, ...]]
    zero_grad: dict[str, dict[str, int]]
    lanes: StepLanes | None = None
    safe: SafeSizes | None = None
    group_sizes: dict[int, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    lengths_estimated: bool = False
    boundary_zeroed_tokens: int = 0


def zero_grad_causes(
    loss_tokens: np.ndarray,
    zero_adv_tokens: np.ndarray,
    nonfinite_adv_tokens: np.ndarray,
    row_weight: np.ndarray,
    zero_variance: np.ndarray,
    at_group_mean: np.ndarray,
) -> dict[str, int]:
    """One cause for every loss token whose gradient weight ``w_i * A`` is 0 or not finite.

    Args:
        loss_tokens, zero_adv_tokens, nonfinite_adv_tokens: ``[n_seqs]`` per-row token counts.
        row_weight: ``[n_seqs]`` weight ``w_i``.
        zero_variance: ``[n_seqs]`` bool, the row's group is zero-variance.
        at_group_mean: ``[n_seqs]`` bool, the row's reward equals its group's mean.

    Returns:
        ``{cause: loss tokens}`` over ``ZERO_GRAD_CAUSES``; the values add up to the
        ``zero_grad_tokens + nonfinite_grad_tokens`` that ``weights.summarize`` counts.
    """
    finite_nonzero = loss_tokens - zero_adv_tokens - nonfinite_adv_tokens  # [n]
    return {
        **_advantage_causes(zero_adv_tokens, nonfinite_adv_tokens, zero_variance, at_group_mean),
        **_weight_causes(finite_nonzero, row_weight),
    }


def _advantage_causes(
    zero_adv_tokens: np.ndarray, nonfinite_adv_tokens: np.ndarray, zero_variance: np.ndarray, at_group_mean: np.ndarray
) -> dict[str, int]:
    """The causes of ``zero_grad_causes`` that the advantages give, the same under every mode."""
    return {
        "nonfinite_advantage": int(nonfinite_adv_tokens.sum()),
        "zero_variance_group": int(zero_adv_tokens[zero_variance].sum()),
        "reward_at_group_mean": int(zero_adv_tokens[~zero_variance & at_group_mean].sum()),
        "zero_advantage": int(zero_adv_tokens[~zero_variance & ~at_group_mean].sum()),
    }


def _weight_causes(finite_nonzero: np.ndarray, row_weight: np.ndarray) -> dict[str, int]:
    """The causes of ``zero_grad_causes`` that a mode's weights give: a token with finite non-zero A
    (``finite_nonzero [n]`` of them per row) has a zero or non-finite gradient only through its weight."""
    return {
        "zero_weight": int(finite_nonzero[row_weight == 0].sum()),
        "nonfinite_weight": int(finite_nonzero[~np.isfinite(row_weight)].sum()),
    }


@dataclass(frozen=True, eq=False)
class StepShared:
    """What ``check_steps`` computed for one step on the stacked steps."""

    zero_grad: dict[str, dict[str, int]]
    response_lengths: np.ndarray
    cuts: dict[str, np.ndarray] | None  # {level: [G] bool} prompts cut at that level (None without uids)
    group_sizes: dict[int, int]
    rebased: np.ndarray | None  # [n] boundary-based prompt_mean weights, where that check may run


def check_one(
    batch: StepBatch,
    layout: Layout,
    split: Split,
    options: CheckOptions,
    weights: dict[str, np.ndarray],
    rows: Rows,
    groups: Groups | None,
    shared: StepShared,
) -> StepCheck:
    """The findings of one step of ``check_steps``."""
    zero_grad = shared.zero_grad
    row_level = _RowFindings(batch.step, groups)
    findings: list[Finding] = []
    findings += row_level.nonfinite_advantage(rows)
    findings += row_level.masked_token_advantage(rows)
    findings += row_level.empty_sequence(rows, [name for name in weights if name in SEQUENCE_DENOMINATOR_MODES])
    findings += no_gradient_findings(
        batch.step,
        int(rows.loss.sum()),
        zero_grad,
        options.no_grad,
        rows=_no_grad_rows(rows, weights, zero_grad),
        detail=_zero_variance_detail(batch, groups),
    )
    notes: tuple[str, ...] = ()
    if options.response_cap is not None:
        findings += truncated_findings(batch, rows.loss, options.response_cap, options.cap_source, shared.response_lengths)
    else:
        hint = cap_hint(batch, shared.response_lengths)
        notes = (hint,) if hint else ()
    if groups is None or shared.cuts is None:
        prompts = _PromptChecks(notes=(_NO_UID_NOTE,))
    else:
        prompts = _prompt_checks(batch, rows, groups, row_level, layout, split, weights, options, shared)
    findings += prompts.findings
    findings.sort(key=lambda f: f.sort_key)
    return StepCheck(
        step=batch.step,
        sequences=rows.n,
        loss_tokens=int(rows.loss.sum()),
        findings=tuple(findings),
        cut_prompts=prompts.cut_prompts,
        zero_grad=zero_grad,
        lanes=prompts.lanes,
        safe=prompts.safe,
        group_sizes=prompts.group_sizes,
        notes=prompts.notes + notes,
        lengths_estimated=batch.lengths_estimated,
        boundary_zeroed_tokens=prompts.boundary_zeroed,
    )


@dataclass(frozen=True, eq=False)
class _PromptChecks:
    """What ``check_step`` finds from the prompt groups (all empty for a step without uids)."""

    findings: list[Finding] = field(default_factory=list)
    cut_prompts: dict[str, tuple[str, ...]] = field(default_factory=lambda: {level: () for level in CUT_LEVELS})
    lanes: StepLanes | None = None
    safe: SafeSizes | None = None
    group_sizes: dict[int, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    boundary_zeroed: int = 0


def _no_grad_rows(
    rows: Rows, weights: dict[str, np.ndarray], zero_grad: dict[str, dict[str, int]]
) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{modes: rows with a loss token without gradient}`` for each group of modes with one accounting."""
    out = {}
    finite_nonzero = rows.loss - rows.zero_adv - rows.nonfinite_adv  # [n]
    for modes, _ in same_accounting(zero_grad):
        weight = weights[modes[0]]  # [n]
        bad_weight = (weight == 0) | ~np.isfinite(weight)
        without = rows.zero_adv + rows.nonfinite_adv + np.where(bad_weight, finite_nonzero, 0)  # [n]
        out[modes] = tuple(np.flatnonzero(without > 0).tolist())
    return out


def _zero_variance_detail(batch: StepBatch, groups: Groups | None) -> dict[str, str]:
    """Words on the zero-variance groups: how many, and their rewards (``{"zero_variance_group": ...}``)."""
    if groups is None or not groups.zero_variance.any():
        return {}
    flat = np.flatnonzero(groups.zero_variance)
    used = int((groups.size > 0).sum())
    text = f", {flat.size} of {plural(used, 'prompt')}"
    if batch.rewards is not None:
        values = np.unique(np.round(groups.reward_mean[flat][np.isfinite(groups.reward_mean[flat])], 9))
        if values.size == 1:
            text += f", every reward {values[0]:.4g}"
        elif values.size:
            text += f", at rewards {', '.join(f'{v:.4g}' for v in values[:4].tolist())}{' …' if values.size > 4 else ''}"
    return {"zero_variance_group": text}


def _prompt_checks(
    batch: StepBatch,
    rows: Rows,
    groups: Groups,
    row_level: _RowFindings,
    layout: Layout,
    split: Split,
    weights: dict[str, np.ndarray],
    options: CheckOptions,
    shared: StepShared,
) -> _PromptChecks:
    """The checks that need uids: group findings, non-contiguous uids, cuts, the boundary prompt_mean."""
    assert shared.cuts is not None
    mode_names = set(weights)
    notes: list[str] = []
    group_sizes = shared.group_sizes
    findings = row_level.zero_advantage(rows, groups, host_float64(batch.rewards))
    findings += _group_findings(batch, rows, groups)
    contiguous = bool((groups.runs <= 1).all())
    in_play = options.boundary_in_play
    if not in_play:
        notes.append(_NOT_SKYRL_NOTE.format(trainer=options.trainer))
    elif "prompt_mean" not in mode_names:
        notes.append(_NO_PROMPT_MEAN_NOTE)
    if in_play:
        findings += _noncontiguous(batch, rows, groups, layout)
    boundary = in_play and "prompt_mean" in mode_names and contiguous
    cut_findings, cut_prompts, cut_by_mini_batch = _cuts(batch.step, rows, groups, mode_names, boundary, shared.cuts)
    findings += cut_findings
    no_gradient = np.zeros(rows.n, dtype=bool)
    boundary_zeroed = 0
    if boundary:
        found, no_gradient = boundary_prompt_mean_findings(batch, rows, groups, split, weights["prompt_mean"], shared.rebased)
        findings += [replace(f, modes=("prompt_mean",)) for f in found]
        boundary_zeroed = boundary_zeroed_tokens(rows, no_gradient, weights["prompt_mean"])
    safe = None
    # the sizes that cut no prompt are worked out for contiguous mini-batches (the canonical composition)
    if layout.composition == "canonical" and (layout.mini_batch_size is not None or layout.mini_batch_prompts is not None):
        safe = _safe_sizes(rows, groups)
    # lanes: trainer positions grouped by mini-batch (already so, unless ranks_first)
    lane_order = rows.order[np.argsort(rows.mini_batch[rows.order], kind="stable")]
    prompt_by_position = np.argsort(np.argsort(groups.first_position, kind="stable"), kind="stable")[groups.code[lane_order]]
    lanes = StepLanes(
        step=batch.step,
        prompt=prompt_by_position,
        mini_batch=rows.mini_batch[lane_order],
        rank=rows.rank[lane_order],
        cut_by_mini_batch=cut_by_mini_batch[groups.code[lane_order]],
        no_gradient=no_gradient[lane_order],
        n_mini_batches=rows.n_mini_batches,
        dp_size=layout.dp_size,
    )
    return _PromptChecks(findings, cut_prompts, lanes, safe, group_sizes, tuple(notes), boundary_zeroed)


def _safe_sizes(rows: Rows, groups: Groups) -> SafeSizes:
    """The mini-batch sizes that cut no prompt of this step, in sequences, in prompts and grouped."""
    n_runs = int(groups.run_of_position[-1]) + 1 if rows.n else 0
    used = groups.size > 0
    first_run = groups.run_of_position[groups.first_position[used]]
    last_run = groups.run_of_position[groups.last_position[used]]
    grouped_end = np.cumsum(groups.size[used])  # grouped order: groups back to back by first appearance
    return SafeSizes(
        sequences=safe_chunk_sizes(groups.first_position[used], groups.last_position[used], rows.n),
        prompts=safe_chunk_sizes(first_run, last_run, n_runs),
        grouped_sequences=safe_chunk_sizes(grouped_end - groups.size[used], grouped_end - 1, rows.n),
    )


@dataclass(frozen=True, eq=False)
class _RowFindings:
    """Row-level findings, one per (step, uid) or, without uids, one per step."""

    step: int
    groups: Groups | None

    def _per_uid(
        self, code: str, flagged: np.ndarray, tokens: np.ndarray, message: Callable[[np.ndarray, str | None], str]
    ) -> list[Finding]:
        rows = np.flatnonzero(flagged)
        if rows.size == 0:
            return []
        if self.groups is None:
            buckets: list[tuple[str | None, np.ndarray]] = [(None, rows)]
        else:
            by_code = rows[np.argsort(self.groups.code[rows], kind="stable")]
            uniques, starts = np.unique(self.groups.code[by_code], return_index=True)
            ends = np.append(starts[1:], rows.size)
            buckets = [(self.groups.labels[g], by_code[s:e]) for g, s, e in zip(uniques.tolist(), starts, ends, strict=True)]
        severity = CODES[code].severity
        return [
            Finding(code, severity, self.step, uid, tuple(members.tolist()), int(tokens[members].sum()), message(members, uid))
            for uid, members in buckets
        ]

    def nonfinite_advantage(self, rows: Rows) -> list[Finding]:
        def message(members: np.ndarray, uid: str | None) -> str:
            count = int(rows.nonfinite_adv[members].sum())
            return (
                f"{plural(count, 'loss token')} of {who(uid, members)} {has_or_have(count)} a NaN or infinite advantage: "
                "the gradient there is not finite in every mode, and one NaN in the loss poisons the whole update. Fix "
                "the advantage at its source (a NaN reward, a 0/0 in the std normalisation) or drop these rows."
            )

        return self._per_uid("nonfinite_advantage", rows.nonfinite_adv > 0, rows.nonfinite_adv, message)

    def masked_token_advantage(self, rows: Rows) -> list[Finding]:
        def message(members: np.ndarray, uid: str | None) -> str:
            count = int(rows.masked_nonzero[members].sum())
            return (
                f"{plural(count, 'masked token')} of {who(uid, members)} {'carries' if count == 1 else 'carry'} a "
                "non-zero advantage: harmless where the loss masks its numerator, a bug where it does not (ROLL's "
                "token-mean, open PR #444). Multiply the advantages by the loss mask."
            )

        return self._per_uid("masked_token_advantage", rows.masked_nonzero > 0, rows.masked_nonzero, message)

    def empty_sequence(self, rows: Rows, modes: Sequence[str]) -> list[Finding]:
        """Only for the selected modes that divide by the sequence count (``modes``): the others do not see an empty row."""
        if not modes:
            return []

        def message(members: np.ndarray, uid: str | None) -> str:
            return (
                f"{who(uid, members)} {has_or_have(int(members.size))} no loss token but still count in the "
                f"sequence denominator N_b ({', '.join(modes)}), diluting every other row of the mini-batch. Drop "
                "empty responses before the update, or check the mask."
            )

        found = self._per_uid("empty_sequence", rows.loss == 0, np.zeros_like(rows.loss), message)
        return [replace(f, modes=tuple(modes)) for f in found]

    def zero_advantage(self, rows: Rows, groups: Groups, rewards: np.ndarray | None) -> list[Finding]:
        all_zero = (rows.loss > 0) & (rows.zero_adv == rows.loss)
        flagged = all_zero & ~groups.zero_variance[groups.code] & ~groups.at_mean
        if rewards is not None:  # a missing reward in a scored group gets advantage 0 by design (TRL's unscorable rows)
            flagged &= ~(np.isnan(rewards) & np.isfinite(groups.reward_mean[groups.code]))

        def message(members: np.ndarray, uid: str | None) -> str:
            if rewards is not None:
                values = ", ".join(f"{v:.4g}" for v in rewards[members][:4].tolist())
                mean = groups.reward_mean[groups.code[members[0]]]
                against = f"a group mean of {mean:.4g}" if np.isfinite(mean) else "no finite reward in the group"
                why = f"reward {values}{' …' if members.size > 4 else ''} against {against}"
            else:
                why = "no reward column, so a reward at the group mean cannot be told apart"
            return (
                f"every loss token of {who(uid, members)} has advantage 0 although the group's rewards vary ({why}): "
                f"{plural(int(rows.loss[members].sum()), 'token')} get no gradient but count in every denominator. "
                "Look for an advantage zeroed after the estimator (a NaN reward replaced by 0, earlier turns of a "
                "multi-turn rollout left at 0, a mask applied twice)."
            )

        return self._per_uid("zero_advantage", flagged, rows.loss, message)


def _group_finding(code: str, step: int, groups: Groups, group: int, rows: Rows, message: str) -> Finding:
    members = groups.rows(group)
    return Finding(
        code, CODES[code].severity, step, groups.labels[group], tuple(members.tolist()), int(rows.loss[members].sum()), message
    )


def _group_findings(batch: StepBatch, rows: Rows, groups: Groups) -> list[Finding]:
    out = []
    step, size = batch.step, groups.size
    rewards = host_float64(batch.rewards)
    for group in np.flatnonzero(size == 1).tolist():
        row = int(groups.rows(group)[0])
        reward = f", reward {rewards[row]:.4g}" if rewards is not None else ""
        out.append(
            _group_finding(
                "singleton_group",
                step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} has one sample (row {row}{reward}): GRPO has no group baseline for it "
                "(verl's estimator takes mean 0 and std 1, so the raw reward is the advantage). Sample n >= 2 responses "
                "per prompt, or drop the prompt.",
            )
        )
    for group in np.flatnonzero((size >= 2) & (size < groups.common_size)).tolist():
        out.append(
            _group_finding(
                "incomplete_group",
                step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} has {size[group]} samples where most prompts of the step have "
                f"{groups.common_size}: responses were lost (filtered, failed or truncated away), so its advantages come "
                "from fewer samples while prompt-level modes weight it like a full group. Find where rows were dropped.",
            )
        )
    for group in np.flatnonzero(groups.zero_variance).tolist():
        members = groups.rows(group)
        loss_tokens = int(rows.loss[members].sum())
        nonzero = loss_tokens - int(rows.zero_adv[members].sum())
        if rewards is not None and np.isfinite(rewards[members]).any():
            finite = rewards[members][np.isfinite(rewards[members])]
            why = f"all {plural(int(finite.size), 'finite reward')} are {finite[0]:.4g}"
        else:
            why = "all advantages are 0"
        if nonzero:
            effect = (
                f"yet {plural(nonzero, 'loss token')} carry a non-zero advantage: they come from something other than "
                "this group's rewards (a value baseline, another group's statistics), so check the estimator."
            )
        else:
            effect = (
                f"so GRPO gives every sample advantage 0; its {plural(loss_tokens, 'loss token')} get no gradient but "
                "still count in every denominator (prime-rl excepted). DAPO-style dynamic sampling filters such groups."
            )
        message = f"prompt {groups.labels[group]} ({plural(int(members.size), 'sample')}): {why}, {effect}"
        out.append(_group_finding("zero_variance_group", step, groups, group, rows, message))
    return out


def _noncontiguous(batch: StepBatch, rows: Rows, groups: Groups, layout: Layout) -> list[Finding]:
    out = []
    split_prompts = np.flatnonzero(groups.runs > 1).tolist()
    command = check_command(batch.source, layout, order="grouped") if split_prompts else ""
    for group in split_prompts:
        members = groups.rows(group)
        out.append(
            _group_finding(
                "noncontiguous_uid",
                batch.step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} appears in {groups.runs[group]} separate runs in trainer order (rows "
                f"{row_ranges(members, 6)}): a boundary-based prompt_mean (SkyRL) stops with an assertion on it, and "
                "prompt counting takes each run for a prompt, so this step's boundary check is skipped. Sort rows by uid "
                f"before splitting; `{command}` shows the effect.",
            )
        )
    return out


def _cuts(
    step: int, rows: Rows, groups: Groups, mode_names: set[str], boundary: bool, cut: dict[str, np.ndarray]
) -> tuple[list[Finding], dict[str, tuple[str, ...]], np.ndarray]:
    """Findings at the coarsest level each cut prompt (``cut``: ``_run_cuts``' of this step) is cut at."""
    legacy = "token_mean_legacy" in mode_names
    severity = {
        "mini_batch": "warning",
        "rank": "warning" if legacy else "info",
        "micro_batch": "warning" if legacy else "info",
    }
    findings = []
    for group in np.flatnonzero(cut["micro_batch"]).tolist():
        level = next(lv for lv in CUT_LEVELS if cut[lv][group])
        members = groups.rows(group)
        message = cut_message(level, groups.labels[group], members, rows, legacy=legacy, boundary=boundary)
        findings.append(
            Finding(
                CUT_CODES[level],
                severity[level],
                step,
                groups.labels[group],
                tuple(members.tolist()),
                int(rows.loss[members].sum()),
                message,
            )
        )
    cut_prompts = {level: tuple(groups.labels[g] for g in _by_first_position(cut[level], groups)) for level in CUT_LEVELS}
    return findings, cut_prompts, cut["mini_batch"]


def _by_first_position(flagged: np.ndarray, groups: Groups) -> list[int]:
    chosen = np.flatnonzero(flagged)
    return chosen[np.argsort(groups.first_position[chosen], kind="stable")].tolist()
