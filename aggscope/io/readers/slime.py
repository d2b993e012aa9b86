"""slime ``--save-debug-rollout-data``: ``{rollout_id}.pt`` written by ``torch.save``.

The file holds ``{"rollout_id": N, "samples": [Sample.to_dict(), ...]}``. Fields used per sample:
``group_index`` (the prompt group), ``response_length``, ``loss_mask`` (one 0/1 per response token,
or None for all ones), ``reward`` (a number, or a dict chosen from with ``--reward-col KEY`` as
slime's ``--reward-key``) and ``remove_sample`` (a removed sample stays a row with no loss token).

- A sequence is the sample's response (its last ``response_length`` tokens).
- Advantages: rebuilt from the reward per ``group_index`` with ``--advantage`` (GRPO by default).
- Step: ``rollout_id``'s number in the file name. ``eval_*.pt`` files (evaluation rollouts) are
  skipped when a folder is given.
- The file is loaded with ``torch.load(weights_only=True)`` (``aggscope.io.safe_load``): a file
  naming any other Python object is refused, never retried with full unpickling;
  ``--trust-pickle`` loads such a file fully.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.core.batch import StepBatch, mask_as_bool
from aggscope.errors import AggscopeError
from aggscope.io.limits import check_fits
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import (
    DumpRollouts,
    build_batch,
    estimator_note,
    plan_by_name,
    rebuild_advantages,
)
from aggscope.io.safe_load import load_torch_file


@dataclass(frozen=True)
class SlimeSettings:
    """``reward_key``: the key of dict rewards (``--reward-col``), or None; ``estimator``: how advantages are
    rebuilt; ``trust``: ``--trust-pickle`` (load fully)."""

    reward_key: str | None
    estimator: str
    trust: bool = False


class SlimeRollouts(DumpRollouts[SlimeSettings]):
    format = "slime"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> SlimeRollouts:
        reject_options(options, cls.format)
        files = list_files(path, (".pt",), "slime .pt files")
        if os.path.isdir(path):
            files = [f for f in files if not os.path.basename(f).startswith("eval_")] or files
        plan, notes = plan_by_name(files)
        estimator = options.advantage or "grpo"
        notes.append(estimator_note(estimator, "reward"))
        first = _load_samples(files[0], options.trust_pickle)  # check the format now (kept for the first step)
        return cls(
            path,
            plan,
            settings=SlimeSettings(options.reward_col, estimator, options.trust_pickle),
            columns={
                "uid": "group_index",
                "advantages": f"{estimator}(reward)",
                "loss_mask": "loss_mask",
                "response_length": "response_length",
                "reward": "reward" if options.reward_col is None else f"reward[{options.reward_col!r}]",
                "step": "(file name)",
            },
            notes=notes,
            has_groups=True,
            loaded=(files[0], first),
        )

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        lengths, masks, rewards, groups = [], [], [], []
        tokens = 0
        for file in files:
            samples = self.load(file, lambda name: _load_samples(name, self.settings.trust))
            for index, sample in enumerate(samples):  # a loop over samples while reading
                where = f"{file}: sample {index}"
                length = sample.get("response_length")
                if isinstance(length, int) and not isinstance(length, bool):
                    tokens += length
                    check_fits(tokens, where, "response_length brings the step to")  # before a mask of that length
                mask = _loss_mask(sample, where)
                group = sample.get("group_index")
                if isinstance(group, bool) or not isinstance(group, int):
                    raise AggscopeError(f"{where}: group_index is {group!r}; expected a whole number (the prompt group)")
                lengths.append(mask.size)
                masks.append(mask)
                rewards.append(self._reward(sample.get("reward"), where))
                groups.append(str(group))
        source = self.step_source(files)
        reward_array = np.asarray(rewards, dtype=np.float64)
        return build_batch(
            step,
            source,
            lengths=np.asarray(lengths, dtype=np.int64),
            loss_mask=np.concatenate(masks) if masks else np.zeros(0, dtype=bool),
            row_advantages=rebuild_advantages(reward_array, groups, self.settings.estimator, source),
            uids=groups,
            rewards=reward_array,
        )

    def _reward(self, reward: Any, where: str) -> float:
        if isinstance(reward, dict):
            if self.settings.reward_key is None:
                raise AggscopeError(
                    f"{where}: the reward is a dict ({', '.join(map(str, reward))}); choose a key with --reward-col"
                )
            if self.settings.reward_key not in reward:
                raise AggscopeError(
                    f"{where}: the reward has no key {self.settings.reward_key!r} (keys: {', '.join(map(str, reward))})"
                )
            reward = reward[self.settings.reward_key]
        if reward is None:
            return float("nan")
        if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, (int, float, np.integer, np.floating)):
            raise AggscopeError(f"{where}: reward is {reward!r}; expected a number")
        return float(reward)


def _load_samples(file: str, trust: bool) -> list[dict[str, Any]]:
    """The samples of a dump file."""
    data = load_torch_file(file, trust=trust)
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise AggscopeError(f"{file}: not a slime rollout dump (expected a dict with a 'samples' list of dicts)")
    if not samples:
        raise AggscopeError(f"{file}: the dump holds no samples")
    return samples


def _loss_mask(sample: dict[str, Any], where: str) -> np.ndarray:
    """``[response_length]`` bool: the sample's loss mask (all ones when None, all zeros when removed)."""
    length = sample.get("response_length")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise AggscopeError(f"{where}: response_length is {length!r}; expected a whole number >= 0")
    tokens = sample.get("tokens")  # the prompt's and the response's: the response is their last response_length
    if isinstance(tokens, (list, tuple)) and len(tokens) < length:
        raise AggscopeError(f"{where}: response_length is {length} but the sample holds {len(tokens)} tokens")
    mask = sample.get("loss_mask")
    if mask is None:
        values = np.ones(length, dtype=bool)
    else:
        values = np.asarray(mask)
        if values.shape != (length,):
            raise AggscopeError(f"{where}: loss_mask must hold {length} values of 0 or 1 (response_length)")
        values = mask_as_bool(values, np.array([0, length]), lambda _, token: (f"{where}: loss_mask", f"token {token}"))
    return np.zeros(length, dtype=bool) if sample.get("remove_sample") else values
