"""Which SPECs coincide, how many optimizer updates each makes, and every prompt's rows for a drill-down.

Two SPECs *coincide* when, in every optimizer update (mini-batch) of every step, one's per-row
weights are the other's times one positive factor: each update then points the same way and only
its size differs (for example ``token_mean``, ``token_sum`` and ``seq_mean_token_sum`` within one
mini-batch: ``1 / T_b``, ``1`` and ``1 / N_b`` for every loss token). Rows without loss tokens get
no gradient under any mode and are not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.analysis.breakdown.model import Breakdown
from aggscope.core.segments import group_sum

# Two weights are "the same up to a factor" to this relative tolerance (float32 weights: 1e-5).
COINCIDE_RTOL = 1e-5
# The drill-down keeps at most this many rows (prompts whole, those with findings first).
DRILLDOWN_ROWS = 4000


@dataclass(frozen=True)
class Coincidence:
    """SPECs that give the same weights up to one factor per optimizer update.

    Attributes:
        labels: the SPECs, in SPEC order; the first is the one the report shows.
        uniform: every loss token of an update gets the same weight under each of them.
        identical: the weights are equal, not only proportional.
    """

    labels: list[str]
    uniform: bool
    identical: bool

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "shown_as": self.labels[0], "uniform": self.uniform, "identical": self.identical}


def row_update(breakdown: Breakdown, label: str) -> np.ndarray:
    """``[n_rows]`` a run-wide id of the optimizer update (step, mini-batch) each row is in, under ``label``'s layout."""
    splits = breakdown.splits[breakdown.spec(label).layout]
    offsets = np.cumsum([0, *(split.n_mini_batches for split in splits[:-1])])  # [n_steps]
    per_step = [split.mini_batch + offset for split, offset in zip(splits, offsets, strict=True)]
    return np.concatenate(per_step) if per_step else np.zeros(0, dtype=np.int64)


def updates_per_step(breakdown: Breakdown, label: str) -> list[int]:
    """The optimizer updates (mini-batches) of each step under ``label``'s layout."""
    return [split.n_mini_batches for split in breakdown.splits[breakdown.spec(label).layout]]


def _factor_per_update(breakdown: Breakdown, base: str, other: str, update: np.ndarray) -> np.ndarray | None:
    """``[n_updates]`` the factor ``w_other / w_base`` of each update, or None when it is not one factor."""
    counted = breakdown.stats.loss_tokens > 0  # [n_rows]
    w_base = breakdown.results[base].row_weight[counted].astype(np.float64)
    w_other = breakdown.results[other].row_weight[counted].astype(np.float64)
    if not (np.isfinite(w_base).all() and np.isfinite(w_other).all()):
        return None
    zero = w_base == 0
    if (w_other[zero] != 0).any():
        return None
    ratio = np.where(zero, math.nan, w_other / np.where(zero, 1.0, w_base))  # [n_counted]
    ids = update[counted]
    n_updates = int(update.max()) + 1 if update.size else 0
    # The factor of an update: its largest ratio; every other ratio must be within tolerance of it.
    factor = np.full(n_updates, -np.inf)
    np.maximum.at(factor, ids[~zero], ratio[~zero])
    low = np.full(n_updates, np.inf)
    np.minimum.at(low, ids[~zero], ratio[~zero])
    used = np.isfinite(factor)
    if (factor[used] <= 0).any() or (low[used] < factor[used] * (1 - COINCIDE_RTOL)).any():
        return None
    return np.where(used, factor, math.nan)


def _uniform(breakdown: Breakdown, label: str, update: np.ndarray) -> bool:
    """Every loss token of an update gets the same weight under ``label``."""
    counted = breakdown.stats.loss_tokens > 0
    weight = breakdown.results[label].row_weight[counted].astype(np.float64)
    ids = update[counted]
    n_updates = int(update.max()) + 1 if update.size else 0
    high, low = np.full(n_updates, -np.inf), np.full(n_updates, np.inf)
    np.maximum.at(high, ids, weight)
    np.minimum.at(low, ids, weight)
    used = np.isfinite(high)
    return bool((low[used] >= high[used] * (1 - COINCIDE_RTOL)).all())


def coincidences(breakdown: Breakdown) -> list[Coincidence]:
    """The groups of two or more SPECs that coincide (each SPEC in at most one group), in SPEC order."""
    labels = breakdown.labels
    updates = {label: row_update(breakdown, label) for label in labels}
    grouped: set[str] = set()
    out = []
    for i, first in enumerate(labels):
        if first in grouped:
            continue
        members, identical = [first], True
        for other in labels[i + 1 :]:
            if other in grouped or not np.array_equal(updates[first], updates[other]):
                continue
            factor = _factor_per_update(breakdown, first, other, updates[first])
            if factor is not None:
                members.append(other)
                identical = identical and bool(np.allclose(factor[np.isfinite(factor)], 1.0, rtol=COINCIDE_RTOL, atol=0))
        if len(members) > 1:
            grouped.update(members)
            uniform = _uniform(breakdown, first, updates[first])
            out.append(Coincidence(members, uniform, identical))
    return out


# ---- the per-prompt drill-down -------------------------------------------------------------------
def _finite(value: float) -> float | None:
    """A number as the drill-down (JSON) holds it: None where it is not finite."""
    number = float(value)
    return number if math.isfinite(number) else None


def drilldown(breakdown: Breakdown, labels: list[str], first: set[tuple[int, str]]) -> dict[str, Any] | None:
    """Every prompt's rows (reward, mean advantage, loss tokens, each SPEC's weight and gradient mass).

    Whole prompts up to ``DRILLDOWN_ROWS`` rows: those in ``first`` ((step, uid) pairs, e.g. the
    prompts with findings) before the others, then in step order. Numbers that are not finite are
    None. None without uids.
    """
    if breakdown.row_prompt is None:
        return None
    stats = breakdown.stats
    finite_tokens = stats.loss_tokens - stats.nonfinite_adv_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_advantage = np.where(finite_tokens > 0, stats.adv_sum / np.maximum(finite_tokens, 1), math.nan)  # [n_rows]
    rows_of_prompt = np.argsort(breakdown.row_prompt, kind="stable")  # [n_rows] rows grouped by prompt
    starts = np.cumsum(breakdown.prompt_rows) - breakdown.prompt_rows  # [n_prompts]
    keys = [(breakdown.steps[int(s)], uid) for s, uid in zip(breakdown.prompt_step, breakdown.prompt_uid, strict=True)]
    order = sorted(range(breakdown.n_prompts), key=lambda p: (keys[p] not in first, p))
    weights = {label: breakdown.results[label].row_weight for label in labels}
    grad_mass = {label: breakdown.row_grad_mass(label) for label in labels}
    prompt_mass = {label: group_sum(grad_mass[label], breakdown.row_prompt, breakdown.n_prompts) for label in labels}
    prompts, shown_rows = [], 0
    for p in order:
        n = int(breakdown.prompt_rows[p])
        if shown_rows + n > DRILLDOWN_ROWS:
            break
        shown_rows += n
        rows = rows_of_prompt[starts[p] : starts[p] + n]
        reward = breakdown.row_reward
        prompts.append(
            {
                "step": keys[p][0],
                "uid": keys[p][1],
                "text": None if breakdown.prompt_text is None else breakdown.prompt_text[p],
                "grad_mass": {label: _finite(prompt_mass[label][p]) for label in labels},
                "rows": [
                    {
                        "reward": None if reward is None else _finite(reward[r]),
                        "mean_advantage": _finite(mean_advantage[r]),
                        "loss_tokens": int(stats.loss_tokens[r]),
                        "weight": {label: _finite(weights[label][r]) for label in labels},
                        "grad_mass": {label: _finite(grad_mass[label][r]) for label in labels},
                    }
                    for r in rows.tolist()
                ],
            }
        )
    return {
        "labels": labels,
        "prompts_total": breakdown.n_prompts,
        "rows_total": breakdown.n_rows,
        "max_rows": DRILLDOWN_ROWS,
        "prompts": prompts,
    }
