"""The labelling journal (the Label tab's answers, one JSON line per answer in the labelling
folder): who reads it. The gateway writes it (serving/labelling.py); the queue (monitoring) and
the Trainer's self-training (components) read which faces were answered."""

from __future__ import annotations

import json
from pathlib import Path

from moodloop.core.contracts import LABELLING_ANSWERS


def answered_ids(folder: Path) -> set[str]:
    """Faces someone has answered (labelled, not a face, or skipped), from the gateway's journal."""
    journal = Path(folder) / LABELLING_ANSWERS
    ids = set()
    for line in journal.read_text().splitlines() if journal.is_file() else []:
        try:
            ids.add(json.loads(line)["face_id"])
        except (ValueError, KeyError):  # a line torn by a crash
            continue
    return ids
