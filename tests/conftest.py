"""Shared test fixtures and paths."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "real"
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture
def real_data() -> Path:
    """The real rollout dumps of ../shared/data/real, or a skip that says why."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dumps not found at {REAL_DATA} (the shared/ folder beside the repository)")
    return REAL_DATA
