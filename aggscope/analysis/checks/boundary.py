"""The boundary-based ``prompt_mean`` (SkyRL's) re-implemented, and the findings it gives.

``boundary_prompt_mean`` computes the row weights SkyRL gives from prompt boundaries in trainer
order; ``boundary_prompt_mean_findings`` compares them with the canonical ``prompt_mean`` weights
of one step (``silent_zero_advantage``: rows left at weight 0; ``rebased_prompt_mean_misweight``:
rows weighted wrongly because a prompt cut at a mini-batch start is not counted in it);
``boundary_zeroed_tokens`` counts the loss tokens of the rows left at 0 that the canonical weights
give a gradient (what SkyRL trains at 0 on top of the zero and non-finite advantages).
"""

from __future__ import annotations

import numpy as np

from aggscope.analysis.checks.catalogue import Finding
from aggscope.analysis.checks.quantities import Groups, Rows
from aggscope.core.batch import StepBatch
from aggscope.core.segments import group_sum, run_ids
from aggscope.core.split import Split
from aggscope.fmt import plural, row_ranges

MISWEIGHT_RTOL = 1e-6


def boundary_prompt_mean(loss_tokens: np.ndarray, group_ids: np.ndarray, split: Split) -> np.ndarray:
    """Row weights of ``prompt_mean`` as SkyRL computes it from prompt boundaries (reference sheet).

    Runs of equal consecutive uids in trainer order; a run belongs to the mini-batch its start lies
    in, and its rows past that mini-batch's end get 0; the mini-batch's prompt count is the number
    of runs starting inside it:
    ``w_i = 1 / (runs starting in b * max(T_run in b, 1))`` for a row of its run's first mini-batch.

    Args:
        loss_tokens: ``[n_seqs]`` loss tokens per row ``L_i``.
        group_ids: ``[n_seqs]`` uid codes.
        split: where every row lands.

    Returns:
        ``[n_seqs]`` float64 weights by seq_index.
    """
    order = split.order
    n_rows = order.size
    if n_rows == 0:
        return np.zeros(0, dtype=np.float64)
    run = run_ids(group_ids[order])  # [n] run of each trainer position
    n_runs = int(run[-1]) + 1
    mini_batch = split.mini_batch[order]  # [n] by position
    starts_run = np.ones(n_rows, dtype=bool)
    starts_run[1:] = run[1:] != run[:-1]
    mini_batch_of_run = mini_batch[starts_run]  # [n_runs] where each run starts
    kept = mini_batch == mini_batch_of_run[run]  # [n] inside its run's first mini-batch
    tokens = np.where(kept, loss_tokens[order].astype(np.float64), 0.0)  # [n]
    run_tokens = group_sum(tokens, run, n_runs)  # [n_runs] T_p over the kept rows
    runs_starting = np.bincount(mini_batch_of_run, minlength=split.n_mini_batches).astype(np.float64)  # [n_mb] len(mine)
    weight = 1.0 / (np.maximum(runs_starting[mini_batch], 1) * np.maximum(run_tokens[run], 1))  # [n]
    weight = np.where(kept, weight, 0.0)
    out = np.empty_like(weight)
    out[order] = weight
    return out


def gradient_tokens(rows: Rows, canonical: np.ndarray) -> np.ndarray:
    """``[n_seqs]`` loss tokens of each row that get a gradient under ``canonical`` row weights: finite
    non-zero advantage and a finite non-zero weight (the tokens ``zero_grad_causes`` counts nowhere)."""
    finite_nonzero = rows.loss - rows.zero_adv - rows.nonfinite_adv  # [n]
    return np.where(np.isfinite(canonical) & (canonical != 0), finite_nonzero, 0)


def boundary_zeroed_tokens(rows: Rows, silent: np.ndarray, canonical: np.ndarray) -> int:
    """Loss tokens of the ``silent`` rows (``[n_seqs]`` bool) that get a gradient under the canonical
    ``prompt_mean`` and none under the boundary-based one: the count to add to the canonical
    ``zero_grad_tokens + nonfinite_grad_tokens`` for what SkyRL trains (no token counted twice)."""
    return int(gradient_tokens(rows, canonical)[silent].sum())


def boundary_prompt_mean_findings(
    batch: StepBatch, rows: Rows, groups: Groups, split: Split, canonical: np.ndarray, rebased: np.ndarray | None = None
) -> tuple[list[Finding], np.ndarray]:
    """``silent_zero_advantage`` and ``rebased_prompt_mean_misweight`` of one step with contiguous uids
    (``rebased``: its ``boundary_prompt_mean`` weights, if known)."""
    assert batch.group_ids is not None
    if rebased is None:
        rebased = boundary_prompt_mean(batch.stats.loss_tokens, batch.group_ids, split)  # [n]
    can = canonical  # [n]
    has_nonzero_adv = rows.loss - rows.zero_adv > 0  # NaN counts as non-zero
    silent = (rebased == 0) & has_nonzero_adv
    misweight = (rows.loss > 0) & ~silent & (np.abs(rebased - can) > MISWEIGHT_RTOL * np.abs(can))
    if not (silent.any() or misweight.any()):
        return [], silent
    mass = can * rows.adv_abs  # [n] sum over the row's finite loss tokens of |A| * w
    mass_of_mini_batch = np.bincount(rows.mini_batch, weights=mass, minlength=rows.n_mini_batches)
    run_start = np.ones(rows.n, dtype=bool)
    run_start[1:] = groups.run_of_position[1:] != groups.run_of_position[:-1]
    runs_starting = np.bincount(rows.mini_batch[rows.order][run_start], minlength=rows.n_mini_batches)  # prompts SkyRL counts
    findings = []
    silent_rows = np.flatnonzero(silent)
    trained = gradient_tokens(rows, can)  # [n]
    for group in np.unique(groups.code[silent_rows]).tolist():
        members = silent_rows[groups.code[silent_rows] == group]
        tokens = int(rows.loss[members].sum())
        losing = int(trained[members].sum())
        lost = float(mass[members].sum())
        lanes = np.unique(rows.mini_batch[members]).tolist()
        share = lost / float(mass_of_mini_batch[lanes].sum()) if mass_of_mini_batch[lanes].sum() > 0 else 0.0
        start = int(rows.mini_batch[groups.rows(group)].min())
        nonfinite = int(rows.nonfinite_adv[members].sum())
        message = (
            f"rows {row_ranges(members, 6)} of prompt {groups.labels[group]} lie in mini-batch "
            f"{', '.join(map(str, lanes))} but the prompt's run starts in mini-batch {start}, so a boundary-based "
            f"prompt_mean (SkyRL) leaves them at weight 0: {plural(losing, 'loss token')} with non-zero advantage get no "
            f"gradient{f' (of their {tokens} loss tokens)' if losing != tokens else ''}. Gradient mass lost: {lost:.4g} (sum of |A| x canonical prompt_mean weight over them, "
            f"{share:.1%} of that mini-batch's)"
            f"{f'; {nonfinite} non-finite advantages left out of the sum' if nonfinite else ''}. Make mini-batches whole "
            "prompts (--mini-batch-prompts, as SkyRL does)."
        )
        findings.append(
            Finding("silent_zero_advantage", "error", batch.step, groups.labels[group], tuple(members.tolist()), tokens, message)
        )
    misweight_rows = np.flatnonzero(misweight)
    for mini_batch in np.unique(rows.mini_batch[misweight_rows]).tolist():
        members = misweight_rows[rows.mini_batch[misweight_rows] == mini_batch]
        in_mini_batch = rows.mini_batch == mini_batch
        canonical_prompts = np.unique(groups.code[in_mini_batch]).size
        ratio = rebased[members] / can[members]
        parts = []
        for value in np.unique(np.round(ratio, 6)).tolist():
            picked = members[np.isclose(ratio, value, rtol=0, atol=5e-7)]
            prompts = np.unique(groups.code[picked]).size
            parts.append(f"{plural(int(picked.size), 'row')} of {plural(prompts, 'prompt')} at {value:.4g}x")
        zeroed = members[rebased[members] == 0]
        note = " (the rows at 0x have advantage 0, so no gradient is lost there)" if zeroed.size else ""
        rebased_prompts = int(runs_starting[mini_batch])
        message = (
            f"mini-batch {mini_batch}: a boundary-based prompt_mean (SkyRL) counts {rebased_prompts} prompts where "
            f"{canonical_prompts} have rows in it, because a prompt cut at the mini-batch start is left out; "
            f"weights: {'; '.join(parts)} the canonical prompt_mean weight{note}. Make mini-batches whole prompts."
        )
        findings.append(
            Finding(
                "rebased_prompt_mean_misweight",
                "warning",
                batch.step,
                None,
                tuple(members.tolist()),
                int(rows.loss[members].sum()),
                message,
            )
        )
    return findings, silent
