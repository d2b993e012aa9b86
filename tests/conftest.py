"""Shared test fixtures and paths.

The tests mirror the package's layers (``tests/core``, ``tests/io``, ``tests/presets``,
``tests/analysis``, ``tests/present``, ``tests/trainer``, ``tests/cli``); the independent reference
implementations (``trainer_reference.py``, ``check_reference.py``, ``framework_wheels.py``) stay here.
Every test folder is importable by module name, so a test may reuse another folder's helpers.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "real"
SAMPLE_DATA = REPO / "sample_data"

for _folder in sorted(p for p in Path(__file__).parent.rglob("*") if p.is_dir() and not p.name.startswith((".", "_"))):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# the dump fixtures of tests/io/readers (the SkyRL stand-in class), shared with the convert tests
pytest_plugins = ["dumps"]


@pytest.fixture
def real_data() -> Path:
    """The real rollout dumps of ../shared/data/real, or a skip that says why."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dumps not found at {REAL_DATA} (the shared/ folder beside the repository)")
    return REAL_DATA


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The corpus's counts (``pytest -m corpus``), as the README's Safety section quotes them."""
    import sys

    corpus = sys.modules.get("test_corpus")
    stats = getattr(corpus, "STATS", None)
    if not stats:
        return
    cases = stats["cases error"] + stats["cases ok"] + stats["cases either"]
    terminalreporter.write_line(
        f"corpus: {cases} cases ({stats['cases error']} refused in one line, {stats['cases ok']} valid but unusual, "
        f"{stats['cases either']} fuzzed), {stats['runs error'] + stats['runs ok']} runs ({stats['runs error']} one-line "
        f"errors, {stats['runs ok']} reads); every run bounded, no traceback, inputs unchanged"
    )
