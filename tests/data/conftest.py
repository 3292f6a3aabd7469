"""Data tests: readers, the synthetic generator and curated spans (no TFX run, seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moodloop.core.settings import REPO_ROOT


@pytest.fixture(scope="session")
def mixed_csv() -> Path:
    """The committed FER2013 CSV with 8 good rows and 6 bad ones, each bad for another reason."""
    return REPO_ROOT / "data" / "samples" / "fer2013_mixed.csv"
