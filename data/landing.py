"""Write landing batches (the landing-batch contract) in the layouts the readers accept.

Used by the synthetic generator's CLI, tests and drift drills; a real team drops its own files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from moodloop.core.contracts import EMOTIONS, SYNTHETIC_MARKER
from moodloop.core.encoded_images import encode_png


def write_fer2013_csv(
    faces: Iterable[tuple[np.ndarray, int]],
    path: Path,
    usage: str = "Training",
    attributes: Sequence[Mapping[str, str]] | None = None,
) -> int:
    """Write `emotion,pixels,Usage` rows, and one more column per slice attribute when each face's
    `attributes` are given (the synthetic generator's nuisance draws); returns the number written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for face in attributes or () for key in face})
    n = 0
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage", *columns])
        for i, (pixels, label) in enumerate(faces):
            extra = [attributes[i].get(key, "") for key in columns] if attributes is not None else []
            writer.writerow([label, " ".join(map(str, pixels.reshape(-1).tolist())), usage, *extra])
            n += 1
    return n


def write_image_folders(
    faces: Iterable[tuple[np.ndarray, int]], root: Path, split: str = "train", prefix: str = "face"
) -> int:
    """Write `<root>/<split>/<emotion>/<prefix>-<i>.png`; returns the number written."""
    n = 0
    for i, (pixels, label) in enumerate(faces):
        folder = root / split / EMOTIONS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}-{i:06d}.png").write_bytes(encode_png(pixels))
        n += 1
    return n


def mark_synthetic(folder: Path, how: str = "") -> Path:
    """Say in the batch itself that its faces are generated (the landing contract's SYNTHETIC_MARKER)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / SYNTHETIC_MARKER
    marker.write_text(
        "# SYNTHETIC faces\n\nDrawn by moodloop's data/synthetic.py (geometric faces, not photographs)"
        + (f": {how}" if how else "")
        + ".\nNo figure measured on them says anything about real faces.\n"
    )
    return marker
