"""What every dump reader shares: the base class, planning steps, building a batch.

A reader turns one framework's dump into a ``aggscope.io.reader.Rollouts``, the object every
command reads; its files are found by ``aggscope.io.paths``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

from aggscope.core.advantages import outcome_advantages
from aggscope.core.batch import StepBatch, offsets_of, uid_codes
from aggscope.errors import AggscopeError
from aggscope.io.decode import uid_texts_of
from aggscope.io.paths import step_in_name
from aggscope.io.reader import Rollouts, no_such_step

S = TypeVar("S")
T = TypeVar("T")


class DumpRollouts(Rollouts, Generic[S]):
    """A framework's dump, read one step at a time into ``StepBatch``.

    Built in one call by the subclass's ``open(path, options)``. What the reader decided when it
    opened the dump (which fields to read, which estimator, ...) is its ``settings``, a frozen
    dataclass of the subclass's own; reading a step changes nothing but the ``notes`` (what reading
    found) and the last file loaded, kept for the next step. Subclasses set ``format`` and
    implement ``_read_step(step, files)``.

    Args:
        step_files: the files of each step, in reading order.
        loaded: ``(file, what loading it gave)`` when ``open`` already loaded a file whole.
    """

    format = ""

    def __init__(
        self,
        source: str,
        step_files: Mapping[int, Sequence[str]],
        *,
        settings: S,
        columns: Mapping[str, str],
        notes: Sequence[str] = (),
        has_groups: bool,
        lengths_estimated: bool = False,
        loaded: tuple[str, Any] | None = None,
    ) -> None:
        self.source = source
        self._step_files = {step: list(files) for step, files in step_files.items()}
        self.steps = sorted(self._step_files)
        self.files = list(dict.fromkeys(f for step in self.steps for f in self._step_files[step]))
        self.columns = dict(columns)
        self.notes = list(notes)
        self.has_groups = has_groups
        self.lengths_estimated = lengths_estimated
        self.settings = settings
        self._loaded = loaded

    def read_step(self, step: int) -> StepBatch:
        if step not in self._step_files:
            raise no_such_step(self.source, step, self.steps)
        return self._read_step(step, self._step_files[step])

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        raise NotImplementedError

    def step_source(self, files: Sequence[str]) -> str:
        return files[0] if len(files) == 1 else self.source

    def load(self, file: str, loader: Callable[[str], T]) -> T:
        """``loader(file)``, or what it gave last time when ``file`` is the last file loaded."""
        if self._loaded is None or self._loaded[0] != file:
            self._loaded = (file, loader(file))
        result: T = self._loaded[1]
        return result

    def load_once(self, file: str, loader: Callable[[str], T]) -> T:
        """``loader(file)``; what ``open`` loaded of ``file`` already is given the first time and then
        let go (for a reader whose steps have files of their own: keeping the last would only hold memory)."""
        if self._loaded is not None and self._loaded[0] == file:
            result: T = self._loaded[1]
            self._loaded = None
            return result
        return loader(file)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for Ray tasks) without the file loaded last, which each process loads for itself."""
        return {**self.__dict__, "_loaded": None}


# ---- steps ---------------------------------------------------------------------------------------
def plan_by_name(files: Sequence[str]) -> tuple[dict[int, list[str]], list[str]]:
    """Steps from the numbers in the file names, else the files' order (with a note saying so)."""
    numbers = [step_in_name(f) for f in files]
    plan: dict[int, list[str]] = {}
    if all(n is not None for n in numbers):
        for file, number in zip(files, numbers, strict=True):
            plan.setdefault(int(number), []).append(file)  # type: ignore[arg-type]
        shared = [(step, names) for step, names in plan.items() if len(names) > 1]
        notes = [
            f"step {step} is read from {len(names)} files whose names give that step ({', '.join(os.path.basename(n) for n in names[:3])}"
            f"{', …' if len(names) > 3 else ''}): their rows are one step"
            for step, names in shared[:3]
        ]
        if len(shared) > 3:
            notes.append(f"{len(shared) - 3} more steps are read from several files each")
        return plan, notes
    if len(files) == 1:
        return {0: list(files)}, []
    return {i: [f] for i, f in enumerate(files)}, ["file names hold no step numbers: steps are numbered by file order"]


# ---- building a step -------------------------------------------------------------------------------
def rebuild_advantages(rewards: np.ndarray, uids: Sequence[Any] | np.ndarray | None, estimator: str, where: str) -> np.ndarray:
    """``[n]`` per-row advantages from the rewards and prompt groups (``aggscope.core.advantages``)."""
    if uids is None:
        raise AggscopeError(f"{where}: no prompt groups, so advantages cannot be rebuilt from rewards")
    codes, _ = uid_codes(np.asarray(uids, dtype=object))  # uids compared as text
    return outcome_advantages(rewards, codes, estimator)


def estimator_note(estimator: str, reward_field: str) -> str:
    detail = {"grpo": "(r - mean) / (std + 1e-6), unbiased std", "dr_grpo": "r - mean", "rloo": "r - mean of the others"}
    return (
        f"advantages rebuilt from {reward_field!r} per prompt group with {estimator}: {detail[estimator]}; "
        "a group of one keeps its raw reward (choose with --advantage grpo|dr_grpo|rloo)"
    )


def build_batch(
    step: int,
    source: str,
    *,
    lengths: np.ndarray,
    loss_mask: np.ndarray | None = None,
    token_advantages: np.ndarray | None = None,
    row_advantages: np.ndarray | None = None,
    uids: Sequence[Any] | np.ndarray | None = None,
    rewards: np.ndarray | None = None,
    lengths_estimated: bool = False,
    prompts: pa.Array | None = None,
    token_factor: np.ndarray | None = None,
) -> StepBatch:
    """A ``StepBatch`` from per-row lengths and flat per-token (or per-row) values.

    Args:
        lengths: ``[n_seqs]`` tokens per row.
        loss_mask: ``[n_tokens]`` bool, or None for every token trained on.
        token_advantages: ``[n_tokens]`` advantages, or None to broadcast ``row_advantages``.
        row_advantages: ``[n_seqs]`` advantages, broadcast over each row's loss tokens (0 on the
            masked ones, as trainers multiply the broadcast advantage by the mask).
        prompts: ``[n_seqs]`` prompt texts, which the batch keeps per group (``uid_texts``).
        token_factor: ``[n_tokens]`` per-token loss factor (``StepBatch.from_flat``), or None.
    """
    # Arrays decoded by pyarrow are read-only; the batch gets its own writable copies.
    offsets = offsets_of(lengths)
    n_tokens = int(offsets[-1])
    mask = np.ones(n_tokens, dtype=bool) if loss_mask is None else np.array(loss_mask, dtype=bool)
    if token_advantages is None:
        assert row_advantages is not None
        spread = np.repeat(np.asarray(row_advantages, dtype=np.float64), lengths)  # [n_tokens]
        token_advantages = np.where(mask, spread, 0.0)
    batch = StepBatch.from_flat(
        np.array(token_advantages),
        mask,
        offsets,
        uids=None if uids is None else np.asarray(uids, dtype=object),
        rewards=None if rewards is None else np.array(rewards, dtype=np.float64),
        step=step,
        source=source,
        token_factor=token_factor,
    )
    texts = None
    if prompts is not None and batch.group_ids is not None:
        texts = uid_texts_of(prompts, batch.group_ids, batch.n_groups)
    changed = lengths_estimated or texts is not None
    return replace(batch, lengths_estimated=lengths_estimated, uid_texts=texts) if changed else batch
