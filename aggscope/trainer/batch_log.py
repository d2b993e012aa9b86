"""Logging the batch a trainer trains on, from any training loop, as canonical Parquet.

Two lines in a training loop::

    import aggscope
    aggscope.log_batch("runs/exp1/batches", step=step, uids=uids, advantages=advantages,
                       loss_mask=loss_mask, rewards=rewards)
    ...
    aggscope.flush_batch_logs()  # end of training (pending writes also finish at interpreter exit)

Each call copies the tensors to host memory (the only wait for the training loop) and hands them
to a background writer thread, which writes one canonical Parquet file per call into the folder:
``step_{step:09d}.parquet`` (``_rank{R}`` with ``rank=``; ``_part{K}`` when a step is logged again
by the same logger). Every file is written under a temporary dot-name and renamed when complete,
so a reader never sees a partial file, even if the process is killed mid-write (a leftover
``.step_*.tmp`` file is ignored by every command). Every command reads the folder as a
multi-step dataset.

Inputs are what trainers hold: padded ``[B, L]`` tensors (left or right padded; padding is just
masked, or cut off by ``attention_mask``), on CPU or GPU, or ragged lists of per-row sequences.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aggscope.core.batch import StepBatch, is_tensor, mask_as_bool, offsets_of, widen_half
from aggscope.errors import AggscopeError
from aggscope.io.canonical import canonical_schema, canonical_table
from aggscope.io.writing import atomic_output

WRITER_METADATA = {"writer": "aggscope.log_batch", "lengths_estimated": False, "notes": []}


@dataclass(frozen=True)
class _HostBatch:
    """One logged step in host memory, as flat arrays (built in the caller's thread)."""

    step: int
    advantages: Any  # [n_tokens] tensor or array, or [n_rows] when per_row
    loss_mask: Any  # [n_tokens]
    offsets: np.ndarray  # [n_rows + 1]
    uids: list[Any] | None
    rewards: Any  # [n_rows] or None
    per_row: bool = False


class BatchLogger:
    """Writes logged batches into one folder through a background thread (see the module docstring).

    Args:
        directory: the folder to write into (created if missing).
        rank: the data-parallel rank, for file names when every rank logs its own shard.
        max_pending: batches held in memory waiting to be written; ``log`` blocks when the writer
            falls that far behind.
    """

    def __init__(self, directory: str | os.PathLike[str], *, rank: int | None = None, max_pending: int = 8) -> None:
        self.directory = Path(directory)
        if self.directory.suffix == ".parquet":
            raise AggscopeError(f"{self.directory}: give a folder; log_batch writes one .parquet file per step into it")
        if self.directory.exists() and not self.directory.is_dir():
            raise AggscopeError(f"{self.directory}: exists and is not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self._queue: queue.Queue[tuple[Path, _HostBatch] | None] = queue.Queue(maxsize=max_pending)
        self._errors: list[str] = []
        self._names: Counter[int] = Counter()
        self._fields: tuple[bool, bool] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"aggscope-log-{self.directory.name}", daemon=True)
        self._thread.start()

    def log(
        self,
        *,
        step: int,
        advantages: Any,
        loss_mask: Any,
        uids: Any = None,
        rewards: Any = None,
        attention_mask: Any = None,
    ) -> Path:
        """Copy one step's batch to host memory and queue it for writing; returns the file it will be.

        Args:
            step: the training step (whole number >= 0).
            advantages: ``[B, L]`` per token, ``[B]`` per row (broadcast over its loss tokens), or a
                list of per-row sequences.
            loss_mask: ``[B, L]`` 0/1 or bool, or a list of per-row sequences.
            uids: ``[B]`` prompt-group ids (strings or integers), or None.
            rewards: ``[B]`` rewards, or None.
            attention_mask: optional ``[B, L]``; only its positions are kept (strips padding).
        """
        self._raise_errors()
        if self._closed:
            raise AggscopeError(f"{self.directory}: this batch logger is closed")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise AggscopeError(f"log_batch: step must be a whole number >= 0, got {step!r}")
        fields = (uids is not None, rewards is not None)
        if self._fields is not None and fields != self._fields:
            said = (
                ", ".join(name for name, given in zip(("uids", "rewards"), self._fields, strict=True) if given)
                or "neither uids nor rewards"
            )
            raise AggscopeError(
                f"log_batch step {step}: log the same fields every step (the first step logged {said}); "
                "every file of a folder must hold the same columns"
            )
        host = _host_batch(int(step), advantages, loss_mask, uids, rewards, attention_mask)
        self._fields = fields
        path = self._next_path(int(step))
        self._queue.put((path, host))
        return path

    def flush(self) -> None:
        """Wait until every queued batch is written; raise if a write failed."""
        self._queue.join()
        self._raise_errors()

    def close(self) -> None:
        """Flush and stop the writer thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self._raise_errors()

    def __enter__(self) -> BatchLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_path(self, step: int) -> Path:
        part = self._names[step]
        self._names[step] += 1
        name = f"step_{step:09d}"
        if self.rank is not None:
            name += f"_rank{self.rank:05d}"
        if part:
            name += f"_part{part:04d}"
        return self.directory / f"{name}.parquet"

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                path, host = job
                _write_table(_table(host), path)
            except Exception as exc:  # reported to the training loop at its next call
                step = "?" if job is None else job[1].step
                message = (
                    exc.message.removeprefix("log_batch: ") if isinstance(exc, AggscopeError) else f"{type(exc).__name__}: {exc}"
                )
                self._errors.append(f"log_batch step {step} was not written: {message}")
            finally:
                self._queue.task_done()

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise AggscopeError(errors[0] + more)


def _write_table(table: pa.Table, path: Path) -> None:
    """Write one step's file under a temporary name, then rename it into place."""
    with atomic_output(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def _table(host: _HostBatch) -> pa.Table:
    """Validate one logged step (the core batch checks) and lay it out as canonical rows."""
    mask = mask_as_bool(
        _numpy(host.loss_mask), host.offsets, lambda row, position: ("loss_mask", f"row {row}, position {position}")
    )
    advantages = _numpy(host.advantages)
    if host.per_row:  # one value per row, broadcast over its loss tokens (0 where masked, as trainers do)
        advantages = np.where(mask, np.repeat(advantages, np.diff(host.offsets)), 0).astype(advantages.dtype)
    batch = StepBatch.from_flat(
        advantages,
        mask,
        host.offsets,
        uids=host.uids,
        rewards=None if host.rewards is None else _numpy(host.rewards),
        step=host.step,
        source="log_batch",
    )
    table = canonical_table(batch, canonical_schema(batch, metadata=WRITER_METADATA))
    if host.uids is not None and _int64_values(host.uids):
        # Integer uids stay integers (the canonical uid column is a string or an integer); others,
        # and integers beyond int64 (64-bit hashes held as uint64), are written as their text.
        index = table.schema.get_field_index("uid")
        table = table.set_column(index, pa.field("uid", pa.int64()), pa.array([int(u) for u in host.uids], type=pa.int64()))
    return table


def _int64_values(values: list[Any]) -> bool:
    return all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and -(2**63) <= int(v) < 2**63 for v in values
    )


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if is_tensor(value) else np.asarray(value)


# ---- host copies (in the caller's thread) -----------------------------------------------------------
def _copy_to_host(value: Any) -> Any:
    """A host-memory copy the caller may overwrite afterwards (tensors, arrays, or nested lists)."""
    if is_tensor(value):
        return widen_half(value.detach()).to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def _is_padded(value: Any) -> bool:
    return (is_tensor(value) or isinstance(value, np.ndarray)) and value.ndim == 2


def _host_batch(step: int, advantages: Any, loss_mask: Any, uids: Any, rewards: Any, attention_mask: Any) -> _HostBatch:
    where = f"log_batch step {step}"
    if _is_padded(loss_mask):
        mask = _copy_to_host(loss_mask)
        n_rows, width = mask.shape
        adv = _copy_to_host(advantages)
        per_row = tuple(adv.shape) == (n_rows,)
        if not per_row and tuple(adv.shape) != (n_rows, width):
            raise AggscopeError(
                f"{where}: advantages of shape {tuple(adv.shape)} match neither the loss mask {(n_rows, width)} nor its rows"
            )
        if attention_mask is None:
            flat_adv, flat_mask = adv if per_row else adv.reshape(-1), mask.reshape(-1)
            offsets = np.arange(n_rows + 1, dtype=np.int64) * width
        else:
            keep = np.asarray(_numpy(_copy_to_host(attention_mask)), dtype=bool)
            if keep.shape != (n_rows, width):
                raise AggscopeError(
                    f"{where}: attention_mask of shape {keep.shape} does not match the loss mask {(n_rows, width)}"
                )
            flat_mask = _numpy(mask)[keep]  # row-major: each row's kept positions in order
            flat_adv = adv if per_row else _numpy(adv)[keep]
            offsets = offsets_of(keep.sum(axis=1))
    elif isinstance(loss_mask, Sequence) and not isinstance(loss_mask, (str, bytes)):
        rows = [_row(m) for m in loss_mask]
        n_rows = len(rows)
        lengths = np.asarray([r.size for r in rows], dtype=np.int64)
        flat_mask = np.concatenate(rows) if rows else np.zeros(0, dtype=bool)
        offsets = offsets_of(lengths)
        flat_adv, per_row = _ragged_advantages(advantages, lengths, where)
    else:
        raise AggscopeError(f"{where}: loss_mask must be a [B, L] tensor or array, or a list of per-row sequences")
    host_uids = None
    if uids is not None:
        host_uids = _copy_to_host(uids).tolist() if is_tensor(uids) or isinstance(uids, np.ndarray) else list(uids)
        if len(host_uids) != n_rows:
            raise AggscopeError(f"{where}: {len(host_uids)} uids for {n_rows} rows")
    host_rewards = None
    if rewards is not None:
        host_rewards = np.asarray(_numpy(_copy_to_host(rewards)) if not isinstance(rewards, list) else rewards, dtype=np.float64)
        if host_rewards.shape != (n_rows,):
            raise AggscopeError(f"{where}: rewards of shape {host_rewards.shape}; expected one per row ({n_rows})")
    return _HostBatch(step, flat_adv, flat_mask, offsets, host_uids, host_rewards, per_row)


def _row(value: Any) -> np.ndarray:
    if is_tensor(value):
        return widen_half(value.detach()).to("cpu", copy=True).reshape(-1).numpy()
    return np.array(value).reshape(-1)


def _ragged_advantages(advantages: Any, lengths: np.ndarray, where: str) -> tuple[Any, bool]:
    """Advantages for ragged rows: flat per-token values, or one value per row (``per_row``)."""
    n_rows = lengths.size
    if (is_tensor(advantages) or isinstance(advantages, np.ndarray)) and advantages.ndim == 1 and advantages.shape[0] == n_rows:
        return _copy_to_host(advantages), True
    if not isinstance(advantages, Sequence) or len(advantages) != n_rows:
        raise AggscopeError(f"{where}: advantages must hold one sequence (or one value) per row of the loss mask ({n_rows} rows)")
    if all(np.ndim(a) == 0 and not is_tensor(a) for a in advantages):
        return np.asarray(advantages, dtype=np.float64), True
    rows = [_row(a) for a in advantages]
    sizes = np.asarray([r.size for r in rows])
    if not np.array_equal(sizes, lengths):
        row = int(np.flatnonzero(sizes != lengths)[0])
        raise AggscopeError(f"{where}: row {row}: advantages has {sizes[row]} values but loss_mask has {lengths[row]}")
    return (np.concatenate(rows) if rows else np.zeros(0)), False


# ---- one shared logger per folder -------------------------------------------------------------------
_SHARED: dict[tuple[Path, int | None], BatchLogger] = {}
_SHARED_LOCK = threading.Lock()


def log_batch(path_or_dir: str | os.PathLike[str], *, step: int, rank: int | None = None, **batch: Any) -> Path:
    """Log one step's batch into a folder of canonical Parquet files (see the module docstring).

    Takes ``advantages``, ``loss_mask`` and optionally ``uids``, ``rewards``, ``attention_mask`` as
    ``BatchLogger.log``; uses one background writer per folder (and rank). Returns the file path the
    batch will be written to.
    """
    key = (Path(path_or_dir).resolve(), rank)
    with _SHARED_LOCK:
        logger = _SHARED.get(key)
        if logger is None:
            if not _SHARED:
                atexit.register(close_batch_logs)
            logger = _SHARED[key] = BatchLogger(path_or_dir, rank=rank)
    return logger.log(step=step, **batch)


def flush_batch_logs() -> None:
    """Wait until every batch logged with ``log_batch`` is on disk; raise if a write failed."""
    with _SHARED_LOCK:
        loggers = list(_SHARED.values())
    for logger in loggers:
        logger.flush()


def close_batch_logs() -> None:
    """Flush and stop the writers of ``log_batch`` (runs at interpreter exit too)."""
    with _SHARED_LOCK:
        loggers = list(_SHARED.values())
        _SHARED.clear()
    for logger in loggers:
        logger.close()
