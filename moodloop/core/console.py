"""A quiet console for the pipeline's processes: moodloop's own lines on stdout, errors on
stderr, and everything else (TFX's INFO lines, TensorFlow's and Google Cloud's deprecation and
FutureWarnings, Beam) in a log file.

moodloop's stages log through `logging.getLogger(__name__)` (loggers under `components`, `data`,
`monitoring`, `serving`, `moodloop`, `dags`); `show_progress()` prints their INFO and WARNING
lines as plain text on stdout. Under Airflow, the task's own log handlers take them instead.

`quiet_console()` runs first, before TensorFlow is imported: a root handler that passes only
errors to the console, so that TensorFlow does not give its logger a console handler of its own
and later `logging.basicConfig` calls (Beam, TFX) do nothing; Python warnings become log records.
Records from before the log file is known are held in memory and written to it by `log_to_file`.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EARLY_RECORDS = 5000  # held until the log file is known (the imports' warnings, mostly)


STAGE_LOGGERS = ("components", "data", "monitoring", "serving", "moodloop", "dags")


class _Console(logging.StreamHandler):
    """Marks the handler quiet_console() installed, so a second call does not add another."""


class _Progress(logging.Handler):
    """moodloop's own lines, plain, on whatever `sys.stdout` is when they are logged (so that a
    redirected or captured stdout gets them too); errors are left to the console handler."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: record.levelno < logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a handler reports, never raises
            self.handleError(record)


def show_progress() -> None:
    """Print moodloop's INFO and WARNING lines on stdout (command-line entry points call this)."""
    for name in STAGE_LOGGERS:
        stage = logging.getLogger(name)
        stage.setLevel(logging.INFO)
        if not any(isinstance(h, _Progress) for h in stage.handlers):
            stage.addHandler(_Progress())


def quiet_console() -> None:
    # TensorFlow's C++ start-up lines (CUDA plug-in probes on a machine without a GPU) are noise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    show_progress()
    root = logging.getLogger()
    if any(isinstance(h, _Console) for h in root.handlers):
        return
    console = _Console(sys.stderr)
    console.setLevel(logging.ERROR)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    early = logging.handlers.MemoryHandler(_EARLY_RECORDS, flushLevel=logging.CRITICAL + 1)
    early.setLevel(logging.INFO)
    root.addHandler(early)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[Path]:
    """Everything logged (INFO and up) goes to `path` while the block runs; earlier records first."""
    quiet_console()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for early in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        early.setTarget(handler)
        early.flush()
        root.removeHandler(early)
        early.close()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
