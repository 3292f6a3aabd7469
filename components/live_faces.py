"""The kept live faces (the inference log's faces table, MOODLOOP_KEEP_LIVE_FACES), as a retrain
uses them.

After a drift the loop asks people to label a few hundred of the faces kept since it began (the
labelling queue). Those kept faces then split four ways, each used once:
- the faces people answered in the Label tab: a curated span like any batch (training and held-out
  faces), so they are not read here;
- the faces with a feedback label (`POST /v1/feedback`, from a user or a labelling tool that labels
  what it is sent, not what the loop asked for): typical traffic that no model trained on, so the
  A/B gate judges on them (components/ab_gate.py);
- the faces of photos the faces page analysed whose feedback is a correction: a corrections batch
  trains on them, so they do neither of the above or below;
- the rest, unlabelled: the Trainer pseudo-labels those it is sure of (components/self_training.py).
A face with a feedback label never trains by self-training: a candidate judged on faces it learned
from its own answers would be judged on its homework.

Drift or not, the newest kept faces are also the real-face anchors of fine-tuning a team's adopted
network (components/fine_tune.py, `newest_kept_faces`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from moodloop.core import labelling_journal, log_records
from moodloop.core.contracts import API_FACES_PAGE, EMOTIONS, LOG_FACES, LOG_FEEDBACK, LOG_PREDICTIONS

log = logging.getLogger("components.live_faces")


@dataclasses.dataclass(frozen=True)
class Pool:
    """Where the retrain finds the kept live faces (components/pipeline.py live_faces_since_drift):
    the inference log's kept faces after `since` (the drifted window's start, from the labelling
    queue), less the faces people answered (the labelling journal in `labelling_dir`)."""

    log_url: str
    since: float | None  # Unix time
    labelling_dir: str

    @classmethod
    def of(cls, config: dict | None) -> Pool | None:
        return cls(**config) if config else None


UNLABELLED, CORRECTED = -1, -2  # a face's `feedback` without a label, or with one that is a correction


def _unanswered_with_feedback(pool: Pool):
    """The kept faces since the drift nobody answered in the Label tab, each with its latest feedback
    label (`feedback`: an EMOTIONS index, UNLABELLED, or CORRECTED), oldest first. None when the log
    is in S3."""
    if str(pool.log_url).startswith("s3://"):
        log.info("the kept live faces are in S3, which the retrain does not read: none are used")
        return None
    faces = log_records.read_log(pool.log_url, LOG_FACES, since=pool.since).to_pandas()
    faces = labelling_journal.unanswered(faces, Path(pool.labelling_dir))
    if faces.empty:
        return faces.assign(feedback=np.zeros(0, np.int64))
    feedback = log_records.read_log(pool.log_url, LOG_FEEDBACK, since=pool.since).to_pandas()
    index = {emotion: i for i, emotion in enumerate(EMOTIONS)}
    kept = set(faces["face_id"])  # feedback on anything else is not held: bounded by the kept faces
    latest: dict[str, int] = {}  # a face labelled twice keeps its latest label
    for request_id, instance, label in zip(
        feedback.get("request_id", []), feedback.get("instance", []), feedback.get("label", []), strict=True
    ):
        if label in index and (face_id := f"{request_id}-{instance}") in kept:
            latest[face_id] = index[label]
    # Feedback on a face of a photo the faces page analysed is a correction: it lands as a batch and
    # trains, so it neither judges nor is pseudo-labelled.
    if latest:
        predictions = log_records.read_log(pool.log_url, LOG_PREDICTIONS, since=pool.since).to_pandas()
        page = predictions[predictions["api"] == API_FACES_PAGE] if not predictions.empty else predictions
        for face_id in page["request_id"] + "-" + page["instance"].astype(str) if not page.empty else []:
            if face_id in latest:
                latest[face_id] = CORRECTED
    return faces.assign(feedback=[latest.get(face_id, UNLABELLED) for face_id in faces["face_id"]])


def unanswered_faces(pool: Pool, most: int) -> list[bytes]:
    """The kept live faces' PNG bytes since the drift that nobody labelled (neither in the Label tab
    nor by feedback), the newest `most`: what self-training may pseudo-label."""
    faces = _unanswered_with_feedback(pool)
    if faces is None or faces.empty:
        return []
    return [bytes(png) for png in faces[faces["feedback"] == UNLABELLED]["face_png"].tail(most)]


def feedback_labelled_faces(pool: Pool, most: int) -> tuple[list[bytes], np.ndarray]:
    """The kept live faces since the drift that carry a feedback label and were not answered in the
    Label tab (so no training set holds them), the newest `most`: (PNG bytes, EMOTIONS indices)."""
    faces = _unanswered_with_feedback(pool)
    if faces is None or faces.empty:
        return [], np.zeros(0, np.int64)
    labelled = faces[faces["feedback"] >= 0].tail(most)
    return [bytes(png) for png in labelled["face_png"]], labelled["feedback"].to_numpy(np.int64)


ANCHOR_HOURS = 24  # the anchors are read from the last day of kept faces: bounded by its hourly cap


def newest_kept_faces(log_url: str, most: int) -> list[bytes]:
    """The newest `most` kept live faces of the last ANCHOR_HOURS (PNG bytes), any label or none."""
    if most <= 0 or not log_url:
        return []
    if str(log_url).startswith("s3://"):
        log.info("the kept live faces are in S3, which the retrain does not read: none are used")
        return []
    faces = log_records.read_log(log_url, LOG_FACES, since=time.time() - ANCHOR_HOURS * 3600).to_pandas()
    return [bytes(png) for png in faces["face_png"].tail(most)] if not faces.empty else []
