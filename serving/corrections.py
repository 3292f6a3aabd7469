"""Corrections flow back into training: a face someone labels (the page's "that's wrong: it is ...",
or any POST /v1/feedback on an analysed face) is kept, and once enough have gathered they go to
the landing zone as one batch (images + labels.csv), which the data contract checks and the next
training learns from like any other batch.

Two parts: `RecentFaces` remembers the crops of recent photo/video/webcam analyses in memory (the
feedback names a face by request id and instance; the crop is what the model saw), `Corrections`
gathers labelled crops on disk (nothing is lost on a restart) and delivers the batch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from moodloop.contracts import EMOTIONS
from moodloop.landing_batches import deliver_batch
from moodloop.settings import Settings

log = logging.getLogger("moodloop.serving")

BATCH_PREFIX = "corrections-"
LABELS_FILE = "labels.csv"  # the landing contract's labelled-images form: file,label


class RecentFaces:
    """The last `capacity` face crops analysed, by (request id, instance); the oldest go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._crops: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, first_instance: int, crops: np.ndarray) -> None:
        with self._lock:
            for offset, crop in enumerate(crops):
                self._crops[(request_id, first_instance + offset)] = np.array(crop, np.uint8)
            while len(self._crops) > self.capacity:
                self._crops.popitem(last=False)

    def get(self, request_id: str, instance: int) -> np.ndarray | None:
        with self._lock:
            return self._crops.get((request_id, instance))


class Corrections:
    """Labelled face crops gathered under `<corrections_dir>/pending/` (one PNG per face; a face
    labelled again keeps its last label), delivered as landing batch `corrections-<time>` once
    `per_batch` have gathered; `delivered.jsonl` lists the batches sent."""

    def __init__(self, settings: Settings, deliver: Callable[[Settings, str, dict[str, bytes]], str] = deliver_batch):
        self.settings = settings
        self.per_batch = settings.serving.corrections_per_batch
        self.folder = Path(settings.corrections_dir)
        self.pending_dir = self.folder / "pending"
        self._deliver = deliver
        self._lock = threading.Lock()

    def add(self, crop: np.ndarray, label: str, request_id: str, instance: int) -> str | None:
        """Keep one labelled face; returns where the batch went when this face completed one."""
        if label not in EMOTIONS:
            raise ValueError(f"label {label!r} is not an emotion")
        ok, png = cv2.imencode(".png", np.asarray(crop, np.uint8))
        if not ok:
            raise ValueError("the face crop could not be encoded")
        with self._lock:
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            face_id = f"{request_id}-{instance}"
            for earlier in self.pending_dir.glob(f"*__{face_id}.png"):  # relabelled: the last word counts
                earlier.unlink()
            staging = self.pending_dir / f".{label}__{face_id}.png"
            staging.write_bytes(png.tobytes())
            staging.replace(self.pending_dir / f"{label}__{face_id}.png")
            pending = self._pending()
            if len(pending) < self.per_batch:
                return None
            try:
                return self._deliver_pending(pending)
            except Exception as error:  # noqa: BLE001 - the faces are safe on disk; the next correction retries
                log.error(
                    f"{len(pending)} corrected faces could not go to the landing zone ({type(error).__name__}: "
                    f"{error}); they stay in {self.pending_dir} and the next correction tries again"
                )
                return None

    def _pending(self) -> list[Path]:
        return sorted(self.pending_dir.glob("*__*.png")) if self.pending_dir.is_dir() else []

    def _deliver_pending(self, pending: list[Path]) -> str:
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["file", "label"])
        files: dict[str, bytes] = {}
        for path in pending:
            label, face_id = path.stem.split("__", 1)
            files[f"faces/{face_id}.png"] = path.read_bytes()
            writer.writerow([f"faces/{face_id}.png", label])
        files[LABELS_FILE] = rows.getvalue().encode()
        name = f"{BATCH_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{len(pending)}"
        where = self._deliver(self.settings, name, files)
        with (self.folder / "delivered.jsonl").open("a") as fh:
            fh.write(json.dumps({"time": time.time(), "batch": name, "faces": len(pending), "where": where}) + "\n")
        for path in pending:  # only once the batch is in the landing zone
            path.unlink()
        return where

    def counts(self) -> dict:
        """For the model panel: faces waiting, the batch size, and the batches sent so far."""
        delivered = []
        log = self.folder / "delivered.jsonl"
        if log.is_file():
            delivered = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return {
            "pending": len(self._pending()),
            "per_batch": self.per_batch,
            "delivered_batches": len(delivered),
            "delivered_faces": sum(d["faces"] for d in delivered),
            "last_batch": delivered[-1] if delivered else None,
        }
