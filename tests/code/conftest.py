"""Code tests: the shared core's units, the CLI's surface and the house rules (import-linter).

Settings are read from the environment, so a test that reads them gets a moodloop home of its own
and none of the developer's `MOODLOOP_*` variables: it sees only what it sets.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [name for name in os.environ if name.startswith("MOODLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MOODLOOP_HOME", str(tmp_path))
    return tmp_path
