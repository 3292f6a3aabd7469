"""The labelling queue: when the traffic has drifted, which of the kept live faces should a person
label first?

A label is worth most where the served model is unsure (uncertainty: one minus the margin between
its two most likely emotions, from the calibrated probabilities) and where it tells the retrain
something the other labels do not (diversity: far, in the model's embedding, from the faces
already chosen). `choose` multiplies the two in a weighted k-center greedy (after Sener & Savarese
2018): it starts from the least sure face, and each next face is the one whose distance to every
face chosen so far, times its uncertainty, is largest. So a dense cluster of unsure faces gets a
few labels, not all of them, and faces the model is sure of are asked about last. `random` is the
baseline it is measured against (bench/drift_drill.py --labels loop:N | random:N).

The faces come from the live-face sample (LOG_FACES, opt-in: MOODLOOP_KEEP_LIVE_FACES); the queue
is written as the labelling-queue contract (moodloop/core/contracts.py) for the gateway's Label tab.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from moodloop.core import labelling_journal, log_records
from moodloop.core.contracts import (
    EMOTIONS,
    LABELLING_FACES,
    LABELLING_QUEUE,
    LOG_EMBEDDING_COLUMNS,
    LOG_FACES,
    LOG_PROBABILITY_COLUMNS,
)
from moodloop.core.files import atomic_write_bytes
from moodloop.core.settings import Settings

STRATEGIES = ("loop", "random")


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per face: small = unsure between two emotions."""
    top_two = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def k_center_greedy(points: np.ndarray, k: int, first: int = 0, weights: np.ndarray | None = None) -> list[int]:
    """`k` row indices of `points`, each next the farthest (times its weight, when given) from
    those chosen so far; fewer when only duplicates of chosen points are left."""
    n = len(points)
    if n == 0 or k <= 0:
        return []
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    chosen = [first]
    nearest = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < min(k, n):
        score = nearest * weights
        nxt = int(np.argmax(score))
        if score[nxt] <= 0:  # only duplicates of chosen faces (or weightless ones) are left
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def features(faces: pd.DataFrame) -> np.ndarray:
    """Where diversity is measured: the model's embedding, standardised per dimension; the face's
    pixels at 12x12 for a model without one."""
    columns = [c for c in LOG_EMBEDDING_COLUMNS if c in faces and faces[c].notna().all()]
    if columns:
        values = faces[columns].to_numpy(np.float64)
    else:
        values = np.stack([_pixels(png)[::4, ::4].reshape(-1) / 255.0 for png in faces["face_png"]])
    spread = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def choose(faces: pd.DataFrame, wanted: int, strategy: str = "loop", seed: int = 0) -> list[tuple[int, str]]:
    """(row position, why) of the faces to label, in the order to ask them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"labelling strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    n = len(faces)
    wanted = min(wanted, n)
    if wanted <= 0:
        return []
    margin = margins(faces[list(LOG_PROBABILITY_COLUMNS)].to_numpy())
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(n)[:wanted]
        return [(int(i), f"random draw (margin {margin[i]:.2f})") for i in order]
    uncertainty = 1.0 - margin
    first = int(np.argmax(uncertainty))
    picked = k_center_greedy(features(faces), wanted, first=first, weights=uncertainty + 1e-6)
    # Fewer distinct faces than wanted: the rest by uncertainty.
    taken = set(picked)
    picked += [int(i) for i in np.argsort(margin, kind="stable") if int(i) not in taken][: wanted - len(picked)]
    return [(i, f"margin {margin[i]:.2f}, far from the faces asked before it") for i in picked]


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def fill_queue(settings: Settings, since: datetime | float | str | None, reason: str, now: float | None = None) -> dict:
    """Queue the kept live faces since `since` worth labelling (MOODLOOP_LABEL_QUEUE_FACES at most,
    chosen by MOODLOOP_LABEL_STRATEGY); faces already answered are not asked again. Replaces the
    queue's unanswered faces. -> what was queued (for the drift decision and the task log)."""
    now = time.time() if now is None else now
    if isinstance(since, str):  # as the drift state keeps it
        since = pd.Timestamp(since).to_pydatetime()
    faces = log_records.read_log(settings.inference_log_url, LOG_FACES, since).to_pandas()
    folder = Path(settings.labelling_dir)
    faces = labelling_journal.unanswered(faces, folder)
    if faces.empty:
        why = "no live faces kept since the window began" + (
            "" if settings.serving.keep_live_faces else " (MOODLOOP_KEEP_LIVE_FACES is off)"
        )
        return {"queued": 0, "why": why}
    strategy = settings.drift.label_strategy
    picks = choose(faces, settings.drift.label_queue_faces, strategy)
    images = folder / LABELLING_FACES
    if images.is_dir():
        shutil.rmtree(images)  # the unanswered faces of an older queue: this one replaces it
    entries = []
    for position, why in picks:
        row = faces.iloc[position]
        probabilities = row[list(LOG_PROBABILITY_COLUMNS)].to_numpy(np.float64)
        atomic_write_bytes(images / f"{row['face_id']}.png", bytes(row["face_png"]))
        entries.append(
            {
                "face_id": row["face_id"],
                "request_id": row["request_id"],
                "instance": int(row["instance"]),
                "model_version": int(row["model_version"]),
                "predicted": EMOTIONS[int(probabilities.argmax())],
                "confidence": round(float(probabilities.max()), 4),
                "why": why,
            }
        )
    queue = {
        "created": now,
        # the kept faces the queue chose from began here (Unix time; None: since the log began): the
        # Trainer's self-training pseudo-labels the unanswered ones (components/self_training.py)
        "since": (since if since.tzinfo else since.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(since, datetime)
        else since,
        "reason": reason,
        "strategy": strategy,
        "kept_faces": int(len(faces)),
        "budget": settings.drift.label_budget,
        "faces": entries,
    }
    atomic_write_bytes(folder / LABELLING_QUEUE, json.dumps(queue, indent=1).encode())
    return {"queued": len(entries), "strategy": strategy, "from_faces": int(len(faces)), "budget": queue["budget"]}


def prune_live_faces(settings: Settings, now: float | None = None) -> int:
    """Delete the live-face sample's hour partitions older than MOODLOOP_LIVE_FACES_DAYS (a local
    inference log; an S3 one keeps its faces under the bucket's lifecycle rule). -> partitions deleted."""
    root = Path(settings.inference_log_url) / LOG_FACES
    if str(settings.inference_log_url).startswith("s3://") or not root.is_dir():
        return 0
    now = time.time() if now is None else now
    cutoff = datetime.fromtimestamp(now, timezone.utc) - timedelta(days=settings.serving.live_faces_days)
    deleted = 0
    for hour in sorted(root.glob("date=*/hour=*")):
        try:
            start = datetime.strptime(f"{hour.parent.name}/{hour.name}", "date=%Y-%m-%d/hour=%H")
        except ValueError:
            continue
        if start.replace(tzinfo=timezone.utc) + timedelta(hours=1) <= cutoff:
            shutil.rmtree(hour)
            deleted += 1
    return deleted
