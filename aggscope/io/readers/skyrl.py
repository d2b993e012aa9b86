"""SkyRL ``trainer.dump_data_batch``: ``{export_path}/dumped_data/global_step_{N}_training_input.pkl``.

The file is a pickled ``TrainingInputBatch`` (a dict of ``[B, L]`` tensors with a ``metadata``
dict), written after the advantages and before training (``skyrl/train/trainer.py``). It is
unpickled with only the globals a SkyRL dump holds (``aggscope.io.safe_load``), so no code from the
file runs and SkyRL need not be installed; ``--trust-pickle`` unpickles it fully.

- Tensors: left-padded ``[B, L]`` ``loss_mask`` and ``advantages`` (before the loss-reduction
  scaling); every position becomes a token, padding is masked. SkyRL's advantages span the
  ``response_mask`` (in multi-turn runs also the tool tokens) and its loss multiplies by
  ``loss_mask`` (``ppo_utils.reduce_loss``), so a finite advantage on a masked token never reaches
  the gradient: it is read as 0, as trained (a note counts them). A NaN or infinite one is kept:
  times a 0 mask it is still NaN in SkyRL's loss. Optional ``rewards`` (per token, or
  one per row) give the reward as the row sum.
- Padding rows: ``pad_training_input_batch`` appends ``metadata["pad_size"]`` copies of row 0 with
  ``loss_mask`` 0 to fill the data-parallel ranks, outside every recorded boundary: they are
  dropped (where ``pad_size`` is not recorded, the rows after the last mini-batch boundary).
- Groups: ``metadata["uids"]`` where kept (SkyRL's trainer removes them before the dump), else
  ``metadata["policy_prompt_boundaries"]`` (one ``(start, end)`` row range per prompt, uid
  ``p{k}``); a trained row outside every boundary gets its own uid ``row:{row}``. Neither: no groups.
- Layout: ``metadata["policy_mini_batch_boundaries"]`` records the mini-batches; where each one
  spans the same number of prompts it is the layout's ``mini_batch_prompts``
  (``recorded_layout``, used unless a flag or ``--config`` sets the mini-batches).
- Step: the number in ``global_step_{N}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggscope.core.batch import StepBatch, host_array, is_tensor, mask_as_bool, widen_half
from aggscope.core.segments import ordered_sums
from aggscope.errors import AggscopeError
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import DumpRollouts, build_batch, plan_by_name
from aggscope.io.readers.skyrl_layout import pad_size, recorded_mini_batch_prompts, skyrl_unrecoverable, trained_rows
from aggscope.io.safe_load import load_skyrl_pickle


@dataclass(frozen=True)
class SkyrlSettings:
    """``reward_key``: the batch's rewards tensor (``--reward-col``, default ``rewards``); ``trust``:
    ``--trust-pickle`` (unpickle fully)."""

    reward_key: str
    trust: bool = False

    def load(self, file: str) -> Any:
        return load_skyrl_pickle(file, trust=self.trust)


class SkyrlRollouts(DumpRollouts[SkyrlSettings]):
    format = "skyrl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> SkyrlRollouts:
        reject_options(options, cls.format, advantage=False)
        files = list_files(path, (".pkl", ".pickle"), "SkyRL .pkl files")
        plan, notes = plan_by_name(files)
        reward_key = options.reward_col or "rewards"
        settings = SkyrlSettings(reward_key, options.trust_pickle)
        first = settings.load(files[0])
        metadata = _metadata(first)
        has_groups = "uids" in metadata or "policy_prompt_boundaries" in metadata
        columns = {"advantages": "advantages", "loss_mask": "loss_mask", "step": "(file name)"}
        if has_groups:
            columns["uid"] = "metadata.uids" if "uids" in metadata else "metadata.policy_prompt_boundaries"
        else:
            notes.append("no uids or policy_prompt_boundaries in the metadata: prompt-level modes and checks are unavailable")
        if _field(first, reward_key) is not None:
            columns["reward"] = f"{reward_key} (row sum)"
        boundaries = metadata.get("policy_mini_batch_boundaries")
        if isinstance(boundaries, (list, tuple)) and boundaries:
            notes.append(f"the dump's policy_mini_batch_boundaries (rows): {_short(boundaries)}")
        rollouts = cls(
            path,
            plan,
            settings=settings,
            columns=columns,
            notes=notes,
            has_groups=has_groups,
            loaded=(files[0], first),
        )
        prompts = recorded_mini_batch_prompts(metadata)
        if prompts is not None:
            rollouts.recorded_layout = {"mini_batch_prompts": prompts}
            rollouts.recorded_layout_source = f"metadata policy_mini_batch_boundaries {_short(boundaries or [])}: {prompts} prompts each by policy_prompt_boundaries"
            rollouts.notes.append(
                f"the dump records its mini-batches: {prompts} prompts each; used as --mini-batch-prompts {prompts} "
                "unless a flag or --config sets the mini-batches"
            )
        rollouts.unrecoverable = skyrl_unrecoverable(has_uids="uids" in metadata, has_boundaries=has_groups)
        return rollouts

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        if len(files) != 1:
            raise AggscopeError(f"{self.source}: {len(files)} SkyRL dumps for step {step} ({files[0]}, {files[1]}); give one")
        file = files[0]
        batch = self.load(file, self.settings.load)
        loss_mask = _tensor(batch, "loss_mask", file)
        advantages = _tensor(batch, "advantages", file)
        if loss_mask.ndim != 2 or advantages.shape != loss_mask.shape:
            raise AggscopeError(
                f"{file}: loss_mask {tuple(loss_mask.shape)} and advantages {tuple(advantages.shape)} must be [B, L] of one shape"
            )
        metadata = _metadata(batch)
        all_rows, width = loss_mask.shape
        n_rows = trained_rows(metadata, all_rows, file)
        if n_rows < all_rows:
            self._note(
                f"step {step}: dropped {all_rows - n_rows} SkyRL padding rows (pad_training_input_batch's copies of row 0, "
                "loss_mask 0, outside every boundary)"
            )
        mask = mask_as_bool(
            loss_mask[:n_rows].reshape(-1),
            np.arange(n_rows + 1, dtype=np.int64) * width,
            lambda row, position: (f"{file}: loss_mask", f"row {row}, position {position}"),
        )
        token_advantages = advantages[:n_rows].reshape(-1)  # [n_rows * width]
        # a finite value times a 0 mask is 0 in SkyRL's loss; NaN * 0 is NaN, so a non-finite one is kept (and reported)
        untrained = ~mask & np.isfinite(token_advantages) & (token_advantages != 0)  # [n_rows * width]
        if untrained.any():
            self._note(
                f"step {step}: {int(untrained.sum())} masked tokens carry a non-zero advantage in the dump; SkyRL's loss "
                "multiplies by loss_mask (reduce_loss), so they are read as 0, as trained"
            )
            token_advantages = np.where(untrained, 0, token_advantages).astype(token_advantages.dtype, copy=False)
        return build_batch(
            step,
            file,
            lengths=np.full(n_rows, width, dtype=np.int64),
            loss_mask=mask,
            token_advantages=token_advantages,
            uids=_uids(metadata, n_rows, file) if self.has_groups else None,
            rewards=self._rewards(batch, all_rows, n_rows, file),
        )

    def _rewards(self, batch: Any, all_rows: int, n_rows: int, file: str) -> np.ndarray | None:
        """``[n_rows]`` row sums of the rewards tensor (per token or per row), or None without one."""
        reward_tensor = _tensor(batch, self.settings.reward_key, file, optional=True)
        if reward_tensor is None:
            return None
        reward_tensor = reward_tensor.astype(np.float64)
        if reward_tensor.shape[:1] != (all_rows,):
            raise AggscopeError(
                f"{file}: {self.settings.reward_key!r} has shape {tuple(reward_tensor.shape)}; expected [{all_rows}, ...]"
            )
        # torch's order of summation, as before
        return ordered_sums(reward_tensor[:n_rows].reshape(n_rows, -1))

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


def _metadata(batch: Any) -> dict[str, Any]:
    metadata = getattr(batch, "metadata", None)
    return metadata if isinstance(metadata, dict) else {}


def _field(batch: Any, key: str) -> Any:
    getter = getattr(batch, "get", None)
    return getter(key) if callable(getter) else None


def _tensor(batch: Any, key: str, file: str, *, optional: bool = False) -> Any:
    value = _field(batch, key)
    if value is None and optional:
        return None
    if value is None:
        raise AggscopeError(f"{file}: the batch has no {key!r} tensor; not a SkyRL training input batch")
    # bool, signed and unsigned integers and floats (numpy's kinds b, i, u, f): anything else is not SkyRL's
    if not is_tensor(value) or np.asarray(host_array(value)).dtype.kind not in "biuf":
        raise AggscopeError(
            f"{file}: {key!r} is a {type(value).__name__}, not a tensor of numbers; not a SkyRL training input batch"
        )
    return widen_half(np.asarray(host_array(value)))


def _uids(metadata: dict[str, Any], n_rows: int, file: str) -> np.ndarray:
    """``[n_rows]`` uids from the metadata's ``uids`` or ``policy_prompt_boundaries``."""
    try:
        return _uids_of(metadata, n_rows, file)
    except (TypeError, ValueError, OverflowError):
        key = "uids" if "uids" in metadata else "policy_prompt_boundaries"
        raise AggscopeError(f"{file}: metadata[{key!r}] does not hold what a SkyRL batch holds there") from None


def _uids_of(metadata: dict[str, Any], n_rows: int, file: str) -> np.ndarray:
    if "uids" in metadata:
        uids = list(metadata["uids"])
        if not n_rows <= len(uids) <= n_rows + pad_size(metadata):  # one per row (its padding rows' may follow)
            raise AggscopeError(f"{file}: metadata has {len(uids)} uids for {n_rows} rows")
        odd = next(
            (row for row, uid in enumerate(uids[:n_rows]) if isinstance(uid, bool) or not isinstance(uid, (str, int))), None
        )
        if odd is not None:
            raise AggscopeError(f"{file}: metadata['uids'][{odd}] is {uids[odd]!r}; a uid is text (or a whole number)")
        return np.asarray([str(u) for u in uids[:n_rows]], dtype=object)
    boundaries = np.asarray(metadata["policy_prompt_boundaries"], dtype=np.int64).reshape(-1, 2)  # [n_prompts, 2]
    starts, ends = boundaries[:, 0], boundaries[:, 1]
    covered = int(ends[-1]) if len(ends) else 0
    if len(starts) and (starts[0] != 0 or (starts[1:] != ends[:-1]).any() or (ends < starts).any() or covered > n_rows):
        raise AggscopeError(
            f"{file}: policy_prompt_boundaries must be contiguous (start, end) row ranges from 0 within {n_rows} rows"
        )
    prompt_of_row = np.repeat(np.arange(len(starts)), ends - starts)  # [covered]
    labels = np.char.add("p", prompt_of_row.astype(str)).astype(object)
    outside = np.char.add("row:", np.arange(covered, n_rows).astype(str)).astype(object)  # trained, in no prompt range
    return np.concatenate([labels, outside])


def _short(values: Sequence[Any]) -> str:
    shown = ", ".join(map(str, list(values)[:4]))
    return f"{shown}, ... ({len(values)} in all)" if len(values) > 4 else shown
