"""Atomic file writes: a reader (TF Serving's config poller, the gateway, the canary analysis,
a retried Airflow task) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write to a hidden temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def path_safe(name: str) -> str:
    """`name` (a run id such as manual__2026-12-01T14:00:00+00:00) as one safe path segment."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
