"""What every dump reader shares: its options, finding files, planning steps, building a batch.

A reader turns one framework's dump into the object every command reads: ``source``, ``files``,
``columns`` (role -> the dump field it came from), ``layout`` (the format), ``steps``, ``notes``,
``has_groups`` and ``iter_steps()`` yielding one ``StepBatch`` per step, read one step at a time.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aggscope.core.advantages import outcome_advantages
from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError
from aggscope.io.limits import check_step

_GLOB_CHARS = set("*?[")
_NUMBER = re.compile(r"\d+")
TEXT_FORMATS = ("verl", "trl")


@dataclass(frozen=True)
class ReadOptions:
    """The shared input options (``--col``, ``--reward-col``, ``--advantage``, ``--tokenizer``).

    Attributes:
        columns: explicit ``{role: field}`` overrides.
        reward_col: the field or column holding the reward, where a dump has several.
        advantage: estimator to rebuild advantages from rewards (``grpo``, ``dr_grpo``, ``rloo``),
            or None for the dump's own advantages (GRPO where it has none).
        tokenizer: a local tokenizer folder for the token counts of text-only dumps.
        trust_pickle: unpickle ``.pkl``/``.pt`` dumps fully (runs code they name; ``aggscope.io.safe_load``).
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    reward_col: str | None = None
    advantage: str | None = None
    tokenizer: str | None = None
    trust_pickle: bool = False


class DumpRollouts:
    """A framework's dump, read one step at a time into ``StepBatch`` (see the module docstring).

    Subclasses set ``format`` and implement ``_read_step(step, files)``.
    """

    format: ClassVar[str] = ""
    texts_known: ClassVar[bool] = False  # True where uids are hashed from prompt texts kept in uid_texts

    def __init__(
        self,
        source: str,
        step_files: Mapping[int, Sequence[str]],
        *,
        columns: Mapping[str, str],
        notes: Sequence[str] = (),
        has_groups: bool,
        lengths_estimated: bool = False,
    ) -> None:
        self.source = source
        self._step_files = {step: list(files) for step, files in step_files.items()}
        self.steps = sorted(self._step_files)
        self.files = list(dict.fromkeys(f for step in self.steps for f in self._step_files[step]))
        self.columns = dict(columns)
        self.layout = self.format
        self.notes = list(notes)
        self.has_groups = has_groups
        self.lengths_estimated = lengths_estimated
        self.uid_texts: dict[str, str] = {}

    def iter_steps(self) -> Iterator[StepBatch]:
        """Yield one ``StepBatch`` per step, ascending, holding only that step in memory."""
        for step in self.steps:
            yield self.read_step(step)

    def read_step(self, step: int) -> StepBatch:
        if step not in self._step_files:
            raise AggscopeError(f"{self.source}: no step {step}; steps: {', '.join(map(str, self.steps))}")
        return self._read_step(step, self._step_files[step])

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        raise NotImplementedError

    def uid_text(self, uid: str) -> str | None:
        """The prompt text behind a uid hashed from text (known once the steps holding it were read)."""
        return self.uid_texts.get(uid)

    def step_source(self, files: Sequence[str]) -> str:
        return files[0] if len(files) == 1 else self.source


# ---- options ---------------------------------------------------------------------------------------
def reject_options(
    options: ReadOptions,
    fmt: str,
    *,
    reward_col: bool = True,
    advantage: bool = True,
    tokenizer: bool = False,
    roles: Sequence[str] = (),
) -> None:
    """One-line error for an input option the format cannot honour (rather than ignoring it)."""
    if options.tokenizer is not None and not tokenizer:
        raise AggscopeError(
            f"--tokenizer counts the tokens of text-only dumps ({', '.join(TEXT_FORMATS)}); the {fmt} format holds tokens already"
        )
    if options.advantage is not None and not advantage:
        raise AggscopeError(f"--advantage: the {fmt} format has no rewards and prompt groups to rebuild advantages from")
    if options.reward_col is not None and not reward_col:
        raise AggscopeError(f"--reward-col: the {fmt} format has no reward field to choose")
    unknown = [role for role in options.columns if role not in roles]
    if unknown:
        allowed = f"only {', '.join(roles)}" if roles else "no roles"
        raise AggscopeError(f"--col {unknown[0]}=...: the {fmt} reader takes {allowed} from --col")


# ---- files and steps -------------------------------------------------------------------------------
def natural_key(path: str) -> list[Any]:
    """Sort key that orders ``rank_2`` before ``rank_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def list_files(path: str, suffixes: Sequence[str], what: str) -> list[str]:
    """The files of a file, a directory (recursive, skipping dot names) or a glob, in natural order."""
    if any(ch in path for ch in _GLOB_CHARS) and not os.path.exists(path):
        files = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
        if not files:
            raise AggscopeError(f"{path}: no file matches this pattern")
        return sorted(files, key=natural_key)
    if not os.path.exists(path):
        raise AggscopeError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(os.path.join(root, n) for n in names if n.endswith(tuple(suffixes)) and not n.startswith("."))
    if not files:
        raise AggscopeError(f"{path}: no {what} in this directory")
    return sorted(files, key=natural_key)


def step_in_name(path: str) -> int | None:
    """The step number in a file name: the last number in its stem (``12.jsonl``, ``step_12``, ...)."""
    numbers = _NUMBER.findall(Path(path).name.split(".")[0])
    return check_step(int(numbers[-1]), f"{path}: the step in the file name") if numbers else None


def plan_by_name(files: Sequence[str]) -> tuple[dict[int, list[str]], list[str]]:
    """Steps from the numbers in the file names, else the files' order (with a note saying so)."""
    numbers = [step_in_name(f) for f in files]
    plan: dict[int, list[str]] = {}
    if all(n is not None for n in numbers):
        for file, number in zip(files, numbers, strict=True):
            plan.setdefault(int(number), []).append(file)  # type: ignore[arg-type]
        return plan, []
    if len(files) == 1:
        return {0: list(files)}, []
    return {i: [f] for i, f in enumerate(files)}, ["file names hold no step numbers: steps are numbered by file order"]


# ---- building a step -------------------------------------------------------------------------------
def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """``[n + 1]`` int64 offsets of segments of the given lengths."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def group_codes(uids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``[n]`` int64 group codes of uids (any order; only equality matters)."""
    _, codes = np.unique(np.asarray(uids, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64).reshape(-1)


def rebuild_advantages(rewards: np.ndarray, uids: Sequence[Any] | np.ndarray | None, estimator: str, where: str) -> np.ndarray:
    """``[n]`` per-row advantages from the rewards and prompt groups (``aggscope.core.advantages``)."""
    if uids is None:
        raise AggscopeError(f"{where}: no prompt groups, so advantages cannot be rebuilt from rewards")
    return outcome_advantages(rewards, group_codes(uids), estimator)


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
) -> StepBatch:
    """A ``StepBatch`` from per-row lengths and flat per-token (or per-row) values.

    Args:
        lengths: ``[n_seqs]`` tokens per row.
        loss_mask: ``[n_tokens]`` bool, or None for every token trained on.
        token_advantages: ``[n_tokens]`` advantages, or None to broadcast ``row_advantages``.
        row_advantages: ``[n_seqs]`` advantages, broadcast over each row's loss tokens (0 on the
            masked ones, as trainers multiply the broadcast advantage by the mask).
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
    )
    return replace(batch, lengths_estimated=True) if lengths_estimated else batch
