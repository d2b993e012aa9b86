"""Refusing sizes that cannot fit in memory, before anything is allocated.

A count read from a file (``response_length``, a slime sample's length) or given as an option
(``sample --prompts``) decides how much memory a step takes. A wrong one (2^40 tokens) would
otherwise end in a ``MemoryError`` traceback, or in the machine swapping for minutes.
"""

from __future__ import annotations

import os

from aggscope.errors import AggscopeError

BATCH_BYTES_PER_TOKEN = 9  # a step in memory: an 8-byte advantage and a 1-byte mask per token (at least)
STEP_RANGE = (-(2**63), 2**63 - 1)  # steps are written as int64 (weights --out, convert, log_batch)


def check_step(step: int, where: str) -> int:
    """``step`` when it fits the int64 that outputs store steps in; else one line naming ``where``."""
    if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:
        shown = str(step) if len(str(step)) <= 30 else f"{str(step)[:12]}... ({len(str(step))} digits)"
        raise AggscopeError(f"{where}: step {shown} is beyond the steps aggscope handles (whole numbers within ±2^63)")
    return step


def memory_bytes() -> int:
    """This machine's physical memory in bytes (2^40 where the system cannot say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def check_fits(tokens: int, where: str, what: str, bytes_per_token: int = BATCH_BYTES_PER_TOKEN) -> None:
    """One line naming ``where`` when ``tokens`` tokens of ``bytes_per_token`` cannot fit in memory.

    Args:
        tokens: the token count the input claims.
        where: the file, row or option at fault (the start of the message).
        what: what claims the count, e.g. ``"'response_length' adds up to"``.
    """
    needed = int(tokens) * bytes_per_token
    available = memory_bytes()
    if needed > available:
        raise AggscopeError(
            f"{where}: {what} {int(tokens):,} tokens, which need about {_size(needed)} in memory, more than this "
            f"machine's {_size(available)}; check the value"
        )


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} PiB"
