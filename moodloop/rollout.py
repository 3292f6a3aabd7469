"""The stable/canary traffic split. TF Serving has labels but no split, so the gateway adds it.

A request that names no version or label goes to `canary` for a share of clients, else to
`stable`. The choice hashes the client id, so a client always lands on the same side, and
raising the share (10 % -> 50 % -> 100 %) only moves clients from stable to canary, never back.
The share lives in a small JSON file beside models.config so the canary analysis can ramp it
while the gateway runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path

from moodloop.models_config import CANARY, STABLE


def client_bucket(client_id: str) -> float:
    """A stable number in [0, 1) for a client id."""
    digest = hashlib.sha256(client_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_label(client_id: str | None, labels: dict[str, int], canary_share: float) -> str | None:
    """stable / canary for a request that pinned nothing; None = the newest version (no labels yet)."""
    if CANARY in labels and canary_share > 0:
        if client_bucket(client_id or uuid.uuid4().hex) < canary_share:
            return CANARY
    return STABLE if STABLE in labels else None


class TrafficFile:
    """{"canary_share": 0.1}; re-read when it changes, written atomically."""

    def __init__(self, path: Path, default_share: float) -> None:
        self.path = Path(path)
        self.default_share = default_share
        self._mtime: float | None = None
        self._share = default_share

    def share(self) -> float:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return self.default_share
        if mtime != self._mtime:
            try:
                self._share = _valid(json.loads(self.path.read_text())["canary_share"])
                self._mtime = mtime
            except (ValueError, KeyError, TypeError, OSError):
                pass  # a broken file keeps the last good share; `set` rewrites it
        return self._share

    def set(self, share: float) -> None:
        share = _valid(share)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump({"canary_share": share}, fh)
        os.replace(tmp, self.path)


def _valid(share: object) -> float:
    value = float(share)  # type: ignore[arg-type]
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"canary share must be between 0 and 1, got {value}")
    return value
