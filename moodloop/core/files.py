"""Atomic file writes: a reader (TF Serving's config poller, the gateway, the canary analysis,
a retried Airflow task) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def version_of(path: Path) -> tuple[int, int, int]:
    """What changes whenever the file does: (inode, mtime in ns, size). An atomic rewrite is a new
    inode, so two writes within one tick of a coarse file-system clock still differ; by the mtime
    alone a reader could keep the first of two quick writes."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


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


def write_private_text(path: Path | str, text: str) -> Path:
    """Write a secret (a password, a token) readable by its owner only from the first byte, and
    never half-written (a stack's secrets file truncated by a crash would lose its PostgreSQL
    password): atomic_write_text's temporary file comes from mkstemp, mode 600, and the rename
    keeps that mode whatever the old file had."""
    return atomic_write_text(path, text)


def atomic_copy(source: Path | str, path: Path | str) -> Path:
    """Copy `source` (a status image or report: small) to `path` as atomic_write_bytes writes."""
    return atomic_write_bytes(path, Path(source).read_bytes())


@contextmanager
def publish_dir(final: Path | str, ready_marker: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Fill a hidden staging folder beside `final`, then rename it to `final` in one step: a
    poller (TF Serving, the landing watcher, the span resolver) sees no folder or a whole one.
    `ready_marker` (contracts.READY_MARKER) is created in it last; `replace` swaps out a folder
    already at `final` (renamed away first, then removed). On an error the staging folder goes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()
    try:
        yield staging
        if ready_marker:
            (staging / ready_marker).touch()
        previous = final.with_name(f".{final.name}.previous")
        if replace and final.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
        os.replace(staging, final)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_version(staging: Path | str, base: Path | str) -> int:
    """Rename a finished model folder to <base>/<version>/ and return the version: seconds since
    the epoch (TF Serving serves the highest number), one up for each number already taken (two
    pushes in one second, or another pusher racing this one: the rename fails, never overwrites)."""
    base = Path(base)
    version = int(time.time())
    while True:
        final = base / str(version)
        if not final.exists():
            try:
                os.rename(staging, final)  # onto an existing non-empty folder: an error, never a merge
                return version
            except OSError:
                if not final.exists():
                    raise
        version += 1


def path_safe(name: str) -> str:
    """`name` (a run id such as manual__2026-12-01T14:00:00+00:00) as one safe path segment."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
