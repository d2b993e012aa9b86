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


TRL_EPSILON = 1e-4


def trl_group_advantages(
    rewards: np.ndarray, group_of_row: np.ndarray, *, scale: bool = True, epsilon: float = TRL_EPSILON
) -> np.ndarray:
    """One advantage per row as TRL 1.16's ``GRPOTrainer`` computes it (``scale_rewards="group"``).

    A reward function returning None gives TRL a NaN reward; such rows are left out of their
    group's statistics (``torch.nanmean`` and TRL's ``nanstd``, unbiased over the finite rows,
    NaN below two) and get advantage 0 (``torch.nan_to_num``), as does every row of a group whose
    std is NaN. Notation: ``r`` a group's rewards, ``m``/``s`` their NaN-aware mean and std.

    - ``scale``:     ``(r - m) / (s + eps)``, ``eps = 1e-4``
    - not ``scale``: ``r - m`` (``scale_rewards="none"``, Dr. GRPO)

    Args:
        rewards: ``[n_rows]`` rewards, NaN where unscorable.
        group_of_row: ``[n_rows]`` int group codes ``0..n_groups-1``.
        scale: divide by the group's std.
        epsilon: the denominator's epsilon.

    Returns:
        ``[n_rows]`` float64 advantages, 0 where TRL's are NaN.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    group_of_row = np.asarray(group_of_row, dtype=np.int64)
    n_groups = int(group_of_row.max()) + 1 if group_of_row.size else 0
    scored = ~np.isnan(rewards)  # [n_rows]
    count = np.bincount(group_of_row, weights=scored, minlength=n_groups)  # [n_groups] finite rows
    total = np.bincount(group_of_row, weights=np.where(scored, rewards, 0.0), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty groups: NaN, as torch.nanmean gives
        mean = total / count
        centred = rewards - mean[group_of_row]  # [n_rows], NaN where unscorable
        if scale:
            squares = np.bincount(group_of_row, weights=np.where(scored, centred * centred, 0.0), minlength=n_groups)
            std = np.where(count > 1, np.sqrt(squares / (count - 1)), np.nan)  # Bessel-corrected, NaN below 2
            centred = centred / (std[group_of_row] + epsilon)
    return np.nan_to_num(centred, nan=0.0)
