"""The Python with TRL that the TRL tests run code in (``$AGGSCOPE_TRL_PYTHON``; ``.ci/run`` builds one)."""

from __future__ import annotations

import os

import pytest


def trl_python(what: str) -> str:
    """The TRL Python's path; skips ``what`` saying why when there is none, and fails under CI."""
    python = os.environ.get("AGGSCOPE_TRL_PYTHON")
    if not python:
        reason = "AGGSCOPE_TRL_PYTHON is not set to a Python with trl==1.16.0 installed (.ci/run builds one)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run {what}, but {reason}")
        pytest.skip(reason)
    return python
