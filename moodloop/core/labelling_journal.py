"""The labelling journal (the Label tab's answers, one JSON line per answer in the labelling
folder): who reads it. The gateway writes it (serving/labelling.py); the queue (monitoring) and
the Trainer's self-training (components) read which faces were answered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from moodloop.core.contracts import LABELLING_ANSWERS

if TYPE_CHECKING:
    import pandas as pd


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


def unanswered(faces: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The kept live faces (the inference log's faces table) nobody has answered, each once, with
    its `face_id` (request id - instance, as the queue names it)."""
    if faces.empty:
        return faces
    faces = faces.assign(face_id=faces["request_id"] + "-" + faces["instance"].astype(str))
    answered = answered_ids(folder)
    return faces[~faces["face_id"].isin(answered)].drop_duplicates("face_id").reset_index(drop=True)
