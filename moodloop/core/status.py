"""The status contract (training and monitoring -> the faces page's model panel): the latest A/B
gate verdict, the latest drift verdict and the latest canary decision, each as
`<status_dir>/<name>.json` with the files it names beside it. Written by components/ab_gate.py,
monitoring/drift.py and monitoring/canary.py, read by the gateway (serving/panel.py) and
`make status`. Written atomically: a reader sees the old verdict or the new one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from moodloop.core.files import atomic_copy, atomic_write_text

# {"verdict", "reasons", "examples", "judged" (which faces: all, or the current traffic's), "candidate_accuracy",
# "champion_accuracy", "largest_slice_gap", "time"}; gate.png, bias.png
GATE = "gate"
# the latest drift window: {"outcome", "reasons", "drift_share", "report": "drift.html" or None,
# "accuracy_estimate" and "live_accuracy" (per version), "time"}; drift.html
DRIFT = "drift"
# the latest canary decision: {"action", "evidence": "labels"|"heuristics", "reasons", "findings", "stable",
# "canary" (each side's numbers), "canary_version", "stable_version", "share", "time"}
CANARY = "canary"
GATE_IMAGE = "gate.png"
BIAS_IMAGE = "bias.png"  # the gate's bias audit: accuracy and recall per slice
DRIFT_REPORT = "drift.html"


def write_status(status_dir: Path | str, name: str, status: dict[str, Any], files: dict[str, Path | str] | None = None):
    """Record the latest `name` verdict; `files` (name in the status folder -> source path) are
    copied first, so the JSON never names a file that is not there yet."""
    folder = Path(status_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for target, source in (files or {}).items():
        atomic_copy(source, folder / target)
    atomic_write_text(folder / f"{name}.json", json.dumps({"time": time.time(), **status}, default=str, indent=1))


def read_status(status_dir: Path | str, name: str) -> dict[str, Any] | None:
    """The latest `name` verdict, or None when there has been none (or it cannot be read)."""
    try:
        return json.loads((Path(status_dir) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def status_file(status_dir: Path | str, file_name: str) -> Path | None:
    path = Path(status_dir) / file_name
    return path if path.is_file() else None
