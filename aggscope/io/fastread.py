"""The fast-read machinery of the Parquet reader, fenced off from the plain read it speeds up.

Everything here only changes how fast a step is read, never what is read: the batches and their
stats are the same bit for bit with it or without it (``tests/io/test_fastread.py`` reads the same
inputs both ways and compares every array byte for byte). Measured gains, from the commits that
brought each piece (see the README, "Performance"):

- ``PageToucher`` (commit 7ddbc3a): a thread takes the page faults of a large step's freshly
  allocated arrays while Parquet decodes. ``read_step`` at 1.8e8 tokens 2.9-3.5 s -> 1.5-2.3 s;
  whole process at 1.8e8 tokens 5.7-6.0 s -> 4.4 s (2 cores, AMD EPYC).
- ``StatsPipeline`` (commit a1cc795): each decoded part of a step is reduced to its per-sequence
  stats on a second thread while the next part decodes. ``weights`` summary / ``read_table`` at
  1e7 and 3e7 tokens 1.94 -> 1.60 (the same machine, 15 A/B rounds).
- One stats thread kept for the whole process, restarted in a forked child (``os.register_at_fork``),
  and a step of one part reduced inline (commit c7b6f3e, with the reader keeping its open file from
  one step to the next): ``check --json`` on 3,000 steps of 12 tokens 36.5 s -> 7.8 s.
- ``ReadAhead``: the row groups of the next two small steps are decoded by Parquet on a third
  thread while the current step is decoded and worked on. In process, 200 steps of 5e4 tokens
  (the fastest of 7 runs, A/B rounds in one script): ``weights`` 0.57-0.58 s -> 0.35-0.40 s
  (0.42-0.49 s reading one step ahead), ``check`` 0.72-0.84 s -> 0.48-0.57 s.

The plain path (no helper thread: no page touching, no reading ahead, the stats computed from the
whole step when first asked for, as ``StepBatch.stats`` does for any batch) is chosen with ``AGGSCOPE_PLAIN_READ=1``
in the environment (read when this module is first imported, and inherited by the workers of a
local Ray), or by setting ``aggscope.io.fastread.PLAIN = True`` (read at the start of every step).
Use it to rule this module out when chasing a wrong number, or where threads are unwelcome.

``reading_progress`` (the listeners of decoded tokens, for the progress bar) is not a speed-up;
it lives here because, like the stats thread, it is state shared by the whole process.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any, TypeVar

import numpy as np

from aggscope.core.batch import SequenceStats, sequence_stats_numpy

Result = TypeVar("Result")

PLAIN = os.environ.get("AGGSCOPE_PLAIN_READ", "") not in ("", "0")
TOUCH_PAGES_FROM = 1 << 24  # steps of this many tokens or more get their pages touched ahead of the copy


# ---- page touching ---------------------------------------------------------------------------------
class PageToucher:
    """Touches the pages of freshly allocated arrays while the reader fills them.

    The first write to a page of new memory costs a page fault; for a step of 1e8 tokens that is
    about a second of the read. A background thread takes those faults while the reading thread
    decodes Parquet (both release the GIL). The reader fills the arrays from the start, the thread
    touches them from the end, one zero per page, a chunk at a time. Under a lock, the reader
    claims ``[0, claimed)`` before each write and the thread reserves each chunk at or above
    ``claimed`` before touching it; when the reader needs a place the thread has reserved, the two
    have met and the reader stops the thread and waits for it. So they never write the same place.
    """

    CHUNK_BYTES = 16 << 20
    PAGE_BYTES = 4096

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = list(arrays)
        self._chunk = max(1, self.CHUNK_BYTES // max(a.itemsize for a in self._arrays))
        self._lock = threading.Lock()
        self._reserved = min(a.size for a in self._arrays)  # the thread writes only at or above this
        self._claimed = 0  # the reader writes only below this
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aggscope-page-toucher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                end = self._reserved
                start = max(self._claimed, end - self._chunk)
                if start >= end:
                    return
                self._reserved = start
            for array in self._arrays:
                array[start : end : max(1, self.PAGE_BYTES // array.itemsize)] = 0

    def before_write(self, end: int) -> None:
        """Call before writing elements ``[.., end)``; stops the thread once the two would meet."""
        with self._lock:
            if end <= self._reserved:
                self._claimed = max(self._claimed, end)
                return
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def touch_pages(arrays: Sequence[np.ndarray]) -> PageToucher | None:
    """A ``PageToucher`` on freshly allocated arrays of a large step; None on the plain path or below
    ``TOUCH_PAGES_FROM`` elements, where the thread costs more than the faults."""
    if PLAIN or min(a.size for a in arrays) < TOUCH_PAGES_FROM:
        return None
    return PageToucher(arrays)


# ---- the helper threads -----------------------------------------------------------------------------
class HelperThread:
    """One daemon thread that runs the calls submitted to it in order, each giving a ``Future``.

    Not a ``ThreadPoolExecutor``: a signal that stops the main thread while a pool starts its thread
    (``Thread.start`` waits, and a Python signal handler may raise there) leaves that thread running
    but unknown to the pool's exit hook, and the interpreter then waits for it at exit for ever. A
    daemon thread never holds up the exit, and every loop here waits for its own calls before it
    ends (``StatsPipeline`` and ``ReadAhead`` on the way out). ``busy`` counts the calls submitted
    whose function has not returned yet: at zero the thread runs none of aggscope's code
    (``present.forked.can_fork`` forks only then).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.busy = 0

    def submit(self, function: Callable[..., Result], *args: Any) -> Future[Result]:
        future: Future[Result] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self.busy += 1  # under the lock: the thread cannot count the call finished before it is counted
            self._calls.put((future, function, args))
        return future

    def _run(self) -> None:
        while True:
            future, function, args = self._calls.get()
            if not future.set_running_or_notify_cancel():  # cancelled before it started
                self._finished()
                continue
            try:
                result = function(*args)
            except BaseException as exc:  # handed to whoever takes the result, as a pool does
                self._finished()
                future.set_exception(exc)
            else:
                self._finished()
                future.set_result(result)
            del future, function, args

    def _finished(self) -> None:
        with self._lock:
            self.busy -= 1


_helpers: dict[str, HelperThread] = {}  # thread name -> its helper
_helpers_lock = threading.Lock()


def _one_thread(name: str) -> HelperThread:
    """The helper thread ``name``, started on first use and kept for the next steps."""
    with _helpers_lock:
        if name not in _helpers:
            _helpers[name] = HelperThread(name)
        return _helpers[name]


def helpers_busy() -> int:
    """How many calls the helper threads of this process have not finished."""
    with _helpers_lock:
        return sum(helper.busy for helper in _helpers.values())


def _stats_worker() -> HelperThread:
    """The one thread that reduces decoded parts."""
    return _one_thread("aggscope-stats")


def _ahead_worker() -> HelperThread:
    """The one thread that reads ahead (``ReadAhead``)."""
    return _one_thread("aggscope-read-ahead")


def _forget_helpers() -> None:
    global _helpers_lock
    _helpers.clear()  # a forked child has no threads: it starts its own
    _helpers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_helpers)


# ---- per-sequence stats on a second thread ---------------------------------------------------------
class StatsPipeline:
    """Reduces each decoded part of a step to its per-sequence stats on a second thread.

    The reading thread goes on decoding the next part meanwhile (numpy and Parquet decoding both
    release the GIL), so the reductions cost little beyond the read, and each runs on a part still
    warm in the CPU caches. Each sequence is reduced on its own, so the concatenated stats equal
    those of the whole step bit for bit. At most ``IN_FLIGHT`` parts wait, which bounds the memory
    they hold when the reductions fall behind. The last part of a step is reduced right here, by
    ``result``, while the thread finishes the others (so a step of a single part never uses the
    thread: for small steps handing work to it costs more than it saves). On the plain path
    (``PLAIN`` when the pipeline is made) it takes nothing and ``result`` is None.
    """

    IN_FLIGHT = 4

    def __init__(self) -> None:
        self.plain = PLAIN
        self._held: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending: deque[Future[SequenceStats]] = deque()
        self._done: list[SequenceStats] = []

    def __enter__(self) -> StatsPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending:  # on an error: drop what has not started, wait for the rest
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()
        self._pending.clear()

    def submit(self, advantages: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        """Reduce one decoded part: ``advantages [n]``, ``mask [n]`` bool, ``offsets [n_seqs + 1]`` from 0.

        The latest part is held back, and the one before it handed to the thread: so the last part
        of a step is reduced by ``result`` on the calling thread while the thread finishes the others.
        """
        if self.plain:
            return
        if self._held is not None:
            if len(self._pending) >= self.IN_FLIGHT:
                self._done.append(self._pending.popleft().result())
            self._pending.append(_stats_worker().submit(sequence_stats_numpy, *self._held))
        self._held = (advantages, mask, offsets)

    def result(self) -> SequenceStats | None:
        """The stats of every part submitted, in order (None on the plain path)."""
        if self.plain:
            return None
        last = None
        if self._held is not None:
            held, self._held = self._held, None
            last = sequence_stats_numpy(*held)
        if not self._pending and not self._done and last is not None:
            return last
        while self._pending:
            self._done.append(self._pending.popleft().result())
        return SequenceStats.concat(self._done if last is None else [*self._done, last])


# ---- reading the next small step ahead -------------------------------------------------------------
class ReadAhead:
    """Reads of the next step, started on a helper thread while this one's step is worked on.

    A run of many small steps pays Parquet's fixed cost of decoding each step's row group (about a
    millisecond at 5e4 tokens) in turn with the per-step analysis; Parquet decodes without the GIL,
    so the read of step ``n + 1`` can run on the second core while step ``n`` is analysed. The
    reader submits each read (``submit``) only after it has finished its own reading of the
    current step, and takes its result (``take``) where it would have read: so only one thread
    uses a file at a time, the same tables come out, and an error is raised by ``take``, in the
    same place and order as without reading ahead. ``close`` waits for what is in flight, so no
    read outlives the loop over steps. On the plain path (``PLAIN`` when it is made) it reads
    nothing ahead: ``submit`` does nothing and ``take`` gives None.
    """

    def __init__(self) -> None:
        self.plain = PLAIN
        self._pending: dict[Hashable, Future[object]] = {}

    def submit(self, key: Hashable, read: Callable[[], object]) -> None:
        if not self.plain:
            self._pending[key] = _ahead_worker().submit(read)

    def wait(self) -> None:
        """Wait until every read submitted has finished (their results stay, for ``take``)."""
        for future in list(self._pending.values()):
            future.exception()

    def take(self, key: Hashable) -> Future[object] | None:
        """The read submitted under ``key`` (its ``result()`` waits for it), or None: read it yourself."""
        return self._pending.pop(key, None)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        for future in self._pending.values():
            if not future.cancelled():
                future.exception()  # waits; an error of a read nobody takes is dropped with it
        self._pending.clear()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- progress ----------------------------------------------------------------------------------------
_read_listeners: list[Callable[[int], None]] = []


@contextmanager
def reading_progress(listener: Callable[[int], None]) -> Iterator[None]:
    """Call ``listener(tokens)`` after each batch of tokens that Parquet reading in this process decodes."""
    _read_listeners.append(listener)
    try:
        yield
    finally:
        _read_listeners.remove(listener)


def tell_listeners(tokens: int) -> None:
    """Report ``tokens`` more decoded to every ``reading_progress`` listener."""
    for listener in _read_listeners:
        listener(tokens)
