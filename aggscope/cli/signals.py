"""SIGTERM and SIGHUP handled like Ctrl-C: the command unwinds, so outputs being written are removed.

Python's default for SIGTERM and SIGHUP ends the process at once, leaving the temporary file or
folder of an output behind (``.NAME.HOST-PID.XXXXXXXX.tmp``). Here they raise ``Terminated`` (a
``KeyboardInterrupt``) in the main thread instead: every ``atomic_output`` and ``atomic_directory``
deletes its temporary on the way out, and the command exits with ``128 + signal number``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


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


@contextmanager
def stop_cleanly_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (only in the main thread, where Python
    delivers signals); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
