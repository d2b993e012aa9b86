"""The checks of consecutive steps: ``check_steps`` (and ``check_step`` of one) give a ``StepCheck`` each.

What is computed per row or per prompt group (weights, token counts, groups, cuts, response lengths,
zero-gradient causes) is computed here once on the steps stacked (``Stack``, ``RunQuantities``);
``step.check_one`` then makes each step's findings from its slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from aggscope.analysis.check_settings import CheckOptions
from aggscope.analysis.checks.boundary import boundary_prompt_mean
from aggscope.analysis.checks.quantities import RunQuantities
from aggscope.analysis.checks.step import StepCheck, StepShared, check_one
from aggscope.analysis.checks.truncation import response_lengths_of_steps
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode, default_modes, resolve_modes
from aggscope.core.split import Split
from aggscope.core.stack import Stack
from aggscope.core.weights import split_batch, weigh_modes, weigh_steps


def check_step(
    batch: StepBatch,
    modes: Sequence[Mode | str] | None = None,
    layout: Layout | None = None,
    split: Split | None = None,
    options: CheckOptions | None = None,
    row_weights: Mapping[str, np.ndarray] | None = None,
) -> StepCheck:
    """Check one step: findings, cut prompts and zero-gradient causes.

    Args:
        batch: the step.
        modes: the modes the user trains with (names or ``Mode``); default every mode that applies.
            They decide the zero-gradient table, whether the boundary-based prompt_mean is checked
            (only with ``prompt_mean``) and the micro-batch cut severity (``token_mean_legacy``).
        layout: the trainer configuration (default: one mini-batch).
        split: the split of this batch under ``layout``, if already computed.
        options: thresholds, the response cap and the trainer in use (default ``CheckOptions()``).
        row_weights: ``{mode name: [n_seqs] row weight}`` of the modes under ``split``, if already
            computed (``analyse_step``'s); the modes it lacks are computed here.
    """
    (check,) = check_steps(
        [batch], modes, layout, None if split is None else [split], options, None if row_weights is None else [row_weights]
    )
    return check


def check_steps(
    batches: Sequence[StepBatch],
    modes: Sequence[Mode | str] | None = None,
    layout: Layout | None = None,
    splits: Sequence[Split] | None = None,
    options: CheckOptions | None = None,
    row_weights: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> list[StepCheck]:
    """``check_step`` of several consecutive steps, the same results (arguments as there, ``splits``
    and ``row_weights`` one per step): what is computed per row or per prompt group (weights, token
    counts, groups, cuts, response lengths, zero-gradient causes) is computed once on the steps
    stacked (``RunQuantities``), so many small steps pay those numpy calls once; only the findings
    are made step by step."""
    layout = layout or Layout()
    options = options or CheckOptions()
    if len(batches) > 1 and not RunQuantities.uniform(batches):  # uids or rewards in some steps only
        return [
            check_step(
                batch,
                modes,
                layout,
                None if splits is None else splits[i],
                options,
                None if row_weights is None else row_weights[i],
            )
            for i, batch in enumerate(batches)
        ]
    if splits is None:
        splits = [split_batch(batch, layout) for batch in batches]
    resolved = _modes_of(batches, modes, layout)
    weights = _weights_of(batches, resolved, layout, splits, row_weights)
    stack = Stack.of(batches, splits)
    run = RunQuantities.of(batches, stack)
    lengths = response_lengths_of_steps(batches)
    mode_names = [mode.name for mode in resolved]
    cuts = _run_cuts(run)
    zero_grads = _run_zero_grad(run, mode_names, weights)
    rebased = None
    if stack.group_ids is not None and options.boundary_in_play and "prompt_mean" in mode_names:
        rebased = boundary_prompt_mean(stack.stats.loss_tokens, stack.group_ids, stack.split)
    return [
        check_one(
            batch,
            layout,
            splits[index],
            options,
            weights[index],
            run.rows(index, batch, splits[index]),
            run.step_groups(index, batch),
            StepShared(
                zero_grad=zero_grads[index],
                response_lengths=lengths[index],
                cuts=None if cuts is None else {level: cut[stack.groups(index)] for level, cut in cuts.items()},
                group_sizes=run.group_sizes(index) if run.groups is not None else {},
                rebased=None if rebased is None else rebased[stack.rows(index)],
            ),
        )
        for index, batch in enumerate(batches)
    ]


def _modes_of(batches: Sequence[StepBatch], modes: Sequence[Mode | str] | None, layout: Layout) -> list[Mode]:
    """The modes checked: the named ones, or every mode that applies (the steps all have uids or none)."""
    if modes is None:
        has_groups = bool(batches) and batches[0].has_groups
        return default_modes(has_groups=has_groups, max_seq_len=layout.max_seq_len)
    return resolve_modes(m if isinstance(m, str) else m.name for m in modes)


def _weights_of(
    batches: Sequence[StepBatch],
    modes: list[Mode],
    layout: Layout,
    splits: Sequence[Split],
    row_weights: Sequence[Mapping[str, np.ndarray]] | None,
) -> list[dict[str, np.ndarray]]:
    """``{mode: [n_seqs] row weight}`` of each step: those given, the others weighed (``weigh_steps``)."""
    known: Sequence[Mapping[str, np.ndarray]] = row_weights if row_weights is not None else [{}] * len(batches)
    missing = [[mode for mode in modes if mode.name not in given] for given in known]
    if all(names == missing[0] for names in missing):
        weighed = weigh_steps(batches, missing[0], layout, splits)
    else:
        weighed = [weigh_modes(batch, need, layout, split) for batch, need, split in zip(batches, missing, splits, strict=True)]
    return [
        {mode.name: given[mode.name] if mode.name in given else computed[mode.name].row_weight for mode in modes}
        for given, computed in zip(known, weighed, strict=True)
    ]


def _run_zero_grad(run: RunQuantities, modes: list[str], weights: list[dict[str, np.ndarray]]) -> list[dict[str, dict[str, int]]]:
    """``{mode: {cause: loss tokens}}`` of each step (``zero_grad_causes``, on the stacked steps)."""
    stack, groups = run.stack, run.groups
    n_rows = int(run.loss.size)
    zero_variance = groups.zero_variance[groups.code] if groups is not None else np.zeros(n_rows, dtype=bool)  # [R]
    at_mean = groups.at_mean if groups is not None else np.zeros(n_rows, dtype=bool)  # [R]
    # the advantages' causes once for every step; each mode adds only those of its weights
    shared = {
        "nonfinite_advantage": stack.per_step(run.nonfinite_adv),
        "zero_variance_group": stack.per_step(np.where(zero_variance, run.zero_adv, 0)),
        "reward_at_group_mean": stack.per_step(np.where(~zero_variance & at_mean, run.zero_adv, 0)),
        "zero_advantage": stack.per_step(np.where(~zero_variance & ~at_mean, run.zero_adv, 0)),
    }
    finite_nonzero = run.loss - run.zero_adv - run.nonfinite_adv  # [R]
    by_mode = {}
    for name in modes:
        weight = np.concatenate([step[name] for step in weights]) if weights else np.zeros(0)  # [R]
        by_mode[name] = {
            "zero_weight": stack.per_step(np.where(weight == 0, finite_nonzero, 0)),
            "nonfinite_weight": stack.per_step(np.where(~np.isfinite(weight), finite_nonzero, 0)),
        }
    shared_lists = {cause: counts.tolist() for cause, counts in shared.items()}
    mode_lists = {name: {cause: counts.tolist() for cause, counts in causes.items()} for name, causes in by_mode.items()}
    return [
        {
            name: {
                **{cause: counts[index] for cause, counts in shared_lists.items()},
                **{cause: counts[index] for cause, counts in mode_lists[name].items()},
            }
            for name in modes
        }
        for index in range(stack.n_steps)
    ]


def _run_cuts(run: RunQuantities) -> dict[str, np.ndarray] | None:
    """``{level: [G] bool}`` over the run's groups: the prompts whose rows span more than one unit of
    the level (None without uids)."""
    groups = run.groups
    if groups is None:
        return None
    split = run.stack.split
    units = {"mini_batch": split.mini_batch, "rank": split.rank_unit, "micro_batch": split.micro_unit}
    used = groups.size > 0
    cut: dict[str, np.ndarray] = {}
    for level, unit in units.items():
        # A prompt spans several units iff its rows' lowest and highest unit differ (under the
        # ranks_first composition a mini-batch is not one run of trainer positions).
        lowest = np.full(groups.size.size, np.iinfo(np.int64).max, dtype=np.int64)
        highest = np.full(groups.size.size, -1, dtype=np.int64)
        np.minimum.at(lowest, groups.code, unit)
        np.maximum.at(highest, groups.code, unit)
        cut[level] = used & (lowest != highest)
    return cut
