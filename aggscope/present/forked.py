"""Encode figures on every core: the same bytes, made in forked copies of this process.

Drawing a matplotlib figure is Python-bound work that holds the GIL, so threads do not help; a
forked child has the figures already (nothing is pickled) and sends back only the encoded bytes.
Workers take the next job from a shared pipe of job numbers as they become free, so one large
figure does not hold up the rest. A child that fails or dies leaves its jobs to this process, which
then does them itself (and raises what they raise, as the plain loop would).

``Standby`` is a child forked early, before the work its job needs: it imports the modules of the
job (matplotlib, most of a second) on the other core while this process reads the input, then
takes the job's data (pickled over a pipe between the two, nothing from any file) and sends back
its result. Where it fails, the caller does the job itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


# Threads of aggscope's own that may wait idle, holding no lock: ``io.fastread``'s reducer and reader
# ahead (idle when ``helpers_busy()`` is 0), and the command line's signal watcher (``cli.signals``,
# blocked reading its pipe).
IDLE_THREAD_PREFIXES = ("aggscope-stats", "aggscope-read-ahead", "aggscope-signals")


def can_fork() -> bool:
    """True where forking is safe: a POSIX system, more than one core, and no other thread running
    but aggscope's idle ones (a thread holding a lock at the fork would leave the child waiting on
    it for ever; a program with threads of its own, such as a trainer, encodes in the plain loop)."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    idle = all(t.name.startswith(IDLE_THREAD_PREFIXES) for t in others)
    fastread = sys.modules.get("aggscope.io.fastread")  # not imported: none of its threads exists
    busy = fastread.helpers_busy() if fastread is not None and others else 0
    return hasattr(os, "fork") and (os.cpu_count() or 1) > 1 and idle and busy == 0


def forked_map(
    encode: Callable[[Item], bytes],
    items: Sequence[Item],
    workers: int | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> list[bytes]:
    """``[encode(item) for item in items]``, spread over ``workers`` processes (default: the cores).

    ``meanwhile``: called once in this process after the children are started and before this
    process takes jobs of its own (so other work overlaps theirs); first, in the plain loop.
    Falls back to the plain loop where ``can_fork()`` is false or there is one item.
    """
    workers = min(len(items), workers or os.cpu_count() or 1)
    if workers < 2 or len(items) > 255 or not can_fork():  # job numbers are single bytes
        if meanwhile is not None:
            meanwhile()
        return [encode(item) for item in items]
    jobs_read, jobs_write = os.pipe()
    os.write(jobs_write, bytes(range(len(items))))
    os.close(jobs_write)  # every job is queued: an empty read means no job is left
    children = [_start_child(encode, items, jobs_read) for _ in range(workers - 1)]
    try:
        if meanwhile is not None:
            meanwhile()
        done = dict(_take_jobs(encode, items, jobs_read))
    except BaseException:
        _stop(children)  # their results are not wanted: no child is left blocked on a full pipe
        raise
    finally:
        os.close(jobs_read)
    for collected, (pid, results_read) in enumerate(children):
        try:
            done.update(_collect(pid, results_read))
        except BaseException:  # a signal while waiting: no child may go on encoding after this process ends
            _stop(children[collected + 1 :])
            raise
    # the jobs of a child that failed: do them here (raising what they raise)
    return [done[index] if index in done else encode(item) for index, item in enumerate(items)]


def _take_jobs(encode: Callable[[Item], bytes], items: Sequence[Item], jobs_read: int) -> list[tuple[int, bytes]]:
    results = []
    while job := os.read(jobs_read, 1):
        results.append((job[0], encode(items[job[0]])))
    return results


def _start_child(encode: Callable[[Item], bytes], items: Sequence[Item], jobs_read: int) -> tuple[int, int]:
    """Fork a worker; returns its pid and the pipe its results come from (sent once, when it is done)."""
    results_read, results_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take jobs until none is left, send every result, leave without cleanup
        code = 1
        try:
            _leave_signals_to_the_parent()
            os.close(results_read)
            results = _take_jobs(encode, items, jobs_read)
            with os.fdopen(results_write, "wb") as out:
                for index, data in results:
                    out.write(_HEADER.pack(index, len(data)) + data)
            code = 0
        finally:
            os._exit(code)
    os.close(results_write)
    return pid, results_read


def _leave_signals_to_the_parent() -> None:
    """In a child: SIGTERM and SIGHUP end it at once, and no signal of its own reaches the parent's
    watcher through the wake-up pipe the child inherited (``cli.signals``); the parent, told by its
    own signal, unwinds and removes what it was writing, or does a killed child's jobs itself."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing was set up here
        signal.set_wakeup_fd(-1)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def _stop(children: list[tuple[int, int]]) -> None:
    for pid, results_read in children:
        _end(pid)
        os.close(results_read)


def _end(pid: int) -> None:
    """Kill a child that is not reaped yet, and reap it."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _own_process_group(pid: int = 0) -> None:
    """Make ``pid`` (0: this process) the leader of a process group of its own, so that
    ``_end_group`` ends it with the workers it forks. Out of the terminal's foreground group, a
    child writing to the terminal (a warning on stderr) would be stopped where ``stty tostop`` is
    set: this process ignores SIGTTOU, so such a write goes through."""
    with contextlib.suppress(OSError):  # the child has already left (the parent's call), or no such call here
        os.setpgid(pid, pid)
    if pid == 0 and hasattr(signal, "SIGTTOU"):
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _end_group(pid: int) -> None:
    """Kill the child ``pid`` with every process of its group (the workers it forked), and reap it.

    A child that was never made a group leader has no group of that number: only it is killed."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _collect(pid: int, results_read: int) -> list[tuple[int, bytes]]:
    try:
        with os.fdopen(results_read, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:  # interrupted before the child was reaped: it goes too
        _end(pid)
        raise
    if os.waitstatus_to_exitcode(status) != 0:
        return []
    results, position = [], 0
    while position < len(data):
        index, size = _HEADER.unpack_from(data, position)
        position += _HEADER.size
        results.append((index, data[position : position + size]))
        position += size
    return results


_HEADER = struct.Struct("<BQ")  # a result's job number and byte count, before its bytes


class Standby:
    """A child forked now that runs ``prepare()`` at once, then waits for one job (``call``).

    Made where ``can_fork()`` holds and the fork succeeds (else it forks nothing and ``call`` gives
    None). Use it as a context manager, or ``close`` it: a child never given a job is killed and
    reaped there. The child leads a process group of its own, and is ended with it: a signal to this
    process alone (SIGTERM, SIGHUP) that unwinds it ends the workers the child forked to draw too.
    """

    def __init__(self, prepare: Callable[[], object]) -> None:
        self._pid: int | None = None
        if not can_fork():
            return
        fds: list[int] = []
        try:
            fds.extend(os.pipe())
            fds.extend(os.pipe())
            pid = os.fork()
        except OSError:  # out of processes, memory or descriptors: the caller does the job itself
            for fd in fds:
                os.close(fd)
            return
        job_read, job_write, result_read, result_write = fds
        if pid == 0:  # the child: prepare, take the job, send its pickled result, leave without cleanup
            code = 1
            try:
                _own_process_group()
                _leave_signals_to_the_parent()
                os.close(job_write)
                os.close(result_read)
                prepare()
                with os.fdopen(job_read, "rb") as pipe:
                    data = pipe.read()
                if data:
                    work, payload = pickle.loads(data)
                    result = pickle.dumps(work(payload), protocol=pickle.HIGHEST_PROTOCOL)
                    with os.fdopen(result_write, "wb") as out:
                        out.write(result)
                code = 0
            finally:
                os._exit(code)
        _own_process_group(pid)  # here too: whichever of the two runs first, the group exists
        os.close(job_read)
        os.close(result_write)
        self._job_write, self._result_read = job_write, result_read
        self._pid = pid

    def call(self, work: Callable[[Any], Item], payload: object, meanwhile: Callable[[], object] | None = None) -> Item | None:
        """``work(payload)`` run in the child (``work`` a module-level function), or None where the
        child is not there or fails. ``meanwhile`` runs here once, while the child works."""
        if self._pid is None:
            if meanwhile is not None:
                meanwhile()
            return None
        try:
            job = pickle.dumps((work, payload), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a payload that cannot be pickled: the caller does the job itself
            self.close()
            return self.call(work, payload, meanwhile)
        pid, self._pid = self._pid, None
        # A thread sends the job, which can be larger than the pipe holds, while this one does meanwhile.
        sender = threading.Thread(target=_send_all, args=(self._job_write, job), name="aggscope-standby-send")
        result_read: int | None = self._result_read
        try:
            sender.start()
            if meanwhile is not None:
                meanwhile()
            sender.join()
            with os.fdopen(self._result_read, "rb") as pipe:
                result_read = None  # the pipe closes it
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
        except BaseException:
            _end_group(pid)  # a signal or an error here: the child and its workers go too
            if result_read is not None:
                os.close(result_read)
            raise
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            return None
        result: Item = pickle.loads(data)
        return result

    def close(self) -> None:
        """End a child still waiting for its job (kill and reap it); nothing once ``call`` was made."""
        if self._pid is not None:
            pid, self._pid = self._pid, None
            _end_group(pid)
            for fd in (self._job_write, self._result_read):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> Standby:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the pipe ``fd`` and close it (a child that died makes it a no-op)."""
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(data)
    except (BrokenPipeError, OSError):
        pass
