"""SIGTERM and SIGHUP handled like Ctrl-C: the command unwinds, so outputs being written are removed.

Python's default for SIGTERM and SIGHUP ends the process at once, leaving the temporary file or
folder of an output behind (``.NAME.HOST-PID.XXXXXXXX.tmp``). Here they raise ``Terminated`` (a
``KeyboardInterrupt``) in the main thread instead: every ``atomic_output`` and ``atomic_directory``
deletes its temporary on the way out, and the command exits with ``128 + signal number``.

Python runs a signal handler only between two bytecodes of the main thread, so a main thread
waiting inside C code (a read from a stalled file system) would never see it. A watcher thread
learns of the signal at once (``signal.set_wakeup_fd``) and, if the command has not stopped within
``GRACE_SECONDS``, removes the outputs being written itself and ends the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
GRACE_SECONDS = 5.0


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


received: list[int] = []  # the signals that stopped a command (typer turns the exception into exit 130)


def _raise(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    raise Terminated(signum)


def _watch(read_fd: int, done: threading.Event) -> None:
    """Wait for a signal byte; end the process if the main thread does not stop in time."""
    while not done.is_set():
        try:
            data = os.read(read_fd, 1)
        except OSError:
            return
        if not data or done.is_set():
            return
        signum = data[0]
        if signum not in HANDLED or done.wait(GRACE_SECONDS):
            continue
        from aggscope.io.writing import discard_active_outputs

        discard_active_outputs()
        os.write(2, f"aggscope: stopped by {signal.Signals(signum).name}; no partial output was left\n".encode())
        os._exit(128 + signum)


@contextmanager
def stop_cleanly_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (only in the main thread, where Python
    delivers signals); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread() or not HANDLED:
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {signum: signal.signal(signum, _raise) for signum in HANDLED}
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread of the main interpreter
        previous_fd = None
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_fd, done), name="aggscope-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            os.write(write_fd, b"\0")  # wake the watcher so it ends
        watcher.join(timeout=1)
        os.close(write_fd)
        if not watcher.is_alive():
            os.close(read_fd)
        sys.stderr.flush()
