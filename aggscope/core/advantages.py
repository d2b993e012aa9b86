"""Outcome advantages rebuilt from one reward per sequence and its prompt group.

Dumps that hold rewards but no advantages (verl's ``rollout_data_dir``, slime, Atropos groups
without ``advantages``) get them rebuilt here with the run's estimator, as verl computes them.
Notation: ``r`` the rewards of one group of ``n`` rows, ``mean_g``/``std_g`` their mean and
unbiased standard deviation, ``eps = 1e-6``.

- ``grpo``:    ``(r - mean_g) / (std_g + eps)``
- ``dr_grpo``: ``r - mean_g`` (Dr. GRPO drops the std normalisation; verl's
  ``norm_adv_by_std_in_grpo=False``)
- ``rloo``:    ``r - (sum_g - r) / (n - 1)``, the mean of the other rows of the group

In every estimator a group of one row gets its raw reward (verl sets its mean to 0 and its std
to 1), and a group whose rewards are all equal gets exactly 0 (also when the floating-point mean
of equal values is not exactly that value). Rewards that are not finite give non-finite advantages
in their group: they are data, reported downstream, not an error.
"""

from __future__ import annotations

import numpy as np

from aggscope.errors import choose

GRPO_EPSILON = 1e-6
ESTIMATORS = ("grpo", "dr_grpo", "rloo")
_ALIASES = {"dr-grpo": "dr_grpo", "drgrpo": "dr_grpo", "reinforce_loo": "rloo"}


def resolve_estimator(name: str) -> str:
    """The canonical estimator name, or a one-line error listing the valid ones."""
    return choose("--advantage", name, ESTIMATORS, _ALIASES, "estimator")


def outcome_advantages(
    rewards: np.ndarray, group_of_row: np.ndarray, estimator: str = "grpo", epsilon: float = GRPO_EPSILON
) -> np.ndarray:
    """One advantage per row from its reward and its group's rewards.

    Args:
        rewards: ``[n_rows]`` rewards.
        group_of_row: ``[n_rows]`` int group codes ``0..n_groups-1``.
        estimator: ``grpo``, ``dr_grpo`` or ``rloo`` (see the module docstring).
        epsilon: the GRPO denominator's epsilon.

    Returns:
        ``[n_rows]`` float64 advantages.
    """
    estimator = resolve_estimator(estimator)
    rewards = np.asarray(rewards, dtype=np.float64)
    group_of_row = np.asarray(group_of_row, dtype=np.int64)
    n_groups = int(group_of_row.max()) + 1 if group_of_row.size else 0
    count = np.bincount(group_of_row, minlength=n_groups).astype(np.float64)  # [n_groups]
    total = np.bincount(group_of_row, weights=rewards, minlength=n_groups)  # [n_groups]
    mean = total / np.maximum(count, 1)
    centred = rewards - mean[group_of_row]  # [n_rows]
    if estimator == "grpo":
        squares = np.bincount(group_of_row, weights=centred * centred, minlength=n_groups)
        std = np.sqrt(squares / np.maximum(count - 1, 1))  # unbiased, as torch.std
        advantages = centred / (std[group_of_row] + epsilon)
    elif estimator == "dr_grpo":
        advantages = centred
    else:
        others = (total[group_of_row] - rewards) / np.maximum(count[group_of_row] - 1, 1)  # leave-one-out mean
        advantages = rewards - others
    constant = _constant_groups(rewards, group_of_row, n_groups)[group_of_row]  # [n_rows]
    single = count[group_of_row] == 1
    advantages = np.where(constant, 0.0, advantages)
    return np.where(single, rewards, advantages)


def _constant_groups(rewards: np.ndarray, group_of_row: np.ndarray, n_groups: int) -> np.ndarray:
    """``[n_groups]`` True where every reward of the group is the same finite value."""
    highest = np.full(n_groups, -np.inf)
    lowest = np.full(n_groups, np.inf)
    with np.errstate(invalid="ignore"):  # NaN rewards make their group non-constant, as they should
        np.maximum.at(highest, group_of_row, rewards)
        np.minimum.at(lowest, group_of_row, rewards)
    return (highest == lowest) & np.isfinite(highest)
