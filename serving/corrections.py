"""Corrections flow back into training: a face someone labels (the page's "that's wrong: it is ...",
or any POST /v1/feedback on an analysed face) is kept, and once enough have gathered they go to
the landing zone as one batch (images + labels.csv), which the data contract checks and the next
training learns from like any other batch.

Two parts: `RecentFaces` remembers the crops of recent photo/video/webcam analyses in memory (the
feedback names a face by request id and instance; the crop is what the model saw), `Corrections`
gathers labelled crops on disk (nothing is lost on a restart) and delivers the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from moodloop.core.contracts import CORRECTIONS_BATCH_PREFIX, EMOTIONS
from moodloop.core.settings import Settings
from serving.landing_batches import deliver_batch

log = logging.getLogger("moodloop.serving")

LABELS_FILE = "labels.csv"  # the landing contract's labelled-images form: file,label
# Who sent each label, beside labels.csv (the landing contract ignores .json files): a batch of
# corrections is training data from outside, so its provenance travels with it.
SENDERS_FILE = "senders.json"


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
    labelled again keeps its last label). Once `per_batch` have gathered, one background worker
    delivers them as landing batch `corrections-<id>` (the id is a digest of the faces in it, so a
    retried delivery rewrites the same batch instead of making another); `delivered.jsonl` lists
    the batches sent. The request that completes a batch does not wait for the landing zone. Each
    face's sender (the client's address, and whether it showed the feedback token) is kept beside
    it (`<face>.sender`) and delivered as the batch's senders.json."""

    def __init__(
        self,
        settings: Settings,
        deliver: Callable[[Settings, str, dict[str, bytes]], str] = deliver_batch,
        background: bool = True,  # False: the caller runs deliver_pending (tests)
        *,
        folder: Path | None = None,  # default: MOODLOOP_CORRECTIONS_DIR
        per_batch: int | None = None,  # default: MOODLOOP_CORRECTIONS_PER_BATCH
        batch_prefix: str = CORRECTIONS_BATCH_PREFIX,
    ):
        """The faces page's corrections by default; the Label tab's answers gather the same way
        (serving/labelling.py: their own folder, MOODLOOP_LABEL_BUDGET a batch, `labelled-` batches)."""
        self.settings = settings
        self.background = background
        self.per_batch = per_batch or settings.serving.corrections_per_batch
        self.batch_prefix = batch_prefix
        self.folder = Path(folder or settings.corrections_dir)
        self.pending_dir = self.folder / "pending"
        self._deliver = deliver
        self._lock = threading.Lock()  # the pending folder's files
        self._delivering = threading.Lock()  # one delivery at a time
        self.last_error = ""

    def add(self, crop: np.ndarray, label: str, request_id: str, instance: int, sender: str = "unknown") -> bool:
        """Keep one labelled face and who labelled it; True when it completed a batch (now on its
        way to the landing zone)."""
        if label not in EMOTIONS:
            raise ValueError(f"label {label!r} is not an emotion")
        ok, png = cv2.imencode(".png", np.asarray(crop, np.uint8))
        if not ok:
            raise ValueError("the face crop could not be encoded")
        with self._lock:
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            face_id = f"{request_id}-{instance}"
            for earlier in self._pending():
                if earlier.stem.split("__", 1)[1] == face_id:  # relabelled: the last word counts
                    earlier.unlink()
                    earlier.with_suffix(".sender").unlink(missing_ok=True)
            # The sender first: a face in pending/ always has its sender beside it.
            (self.pending_dir / f"{label}__{face_id}.sender").write_text(sender)
            staging = self.folder / f".{label}__{face_id}.png"  # outside pending/: never taken half-written
            staging.write_bytes(png.tobytes())
            staging.replace(self.pending_dir / f"{label}__{face_id}.png")
            full = len(self._pending()) >= self.per_batch
        if full and self.background:
            threading.Thread(target=self.deliver_pending, name="corrections-delivery", daemon=True).start()
        return full

    def _pending(self) -> list[Path]:
        if not self.pending_dir.is_dir():
            return []
        return sorted(p for p in self.pending_dir.glob("*__*.png") if not p.name.startswith("."))

    def deliver_pending(self, at_least: int | None = None) -> str | None:
        """Send the gathered faces as one landing batch; None when there were fewer than `at_least`
        (default: a whole batch), another delivery is running, or the landing zone refused (the
        faces stay; the next try sends them)."""
        if not self._delivering.acquire(blocking=False):
            return None
        try:
            with self._lock:
                pending = self._pending()
                if not pending or len(pending) < (self.per_batch if at_least is None else at_least):
                    return None
                files, rows, senders = {}, ["file,label"], {}
                for path in pending:
                    label, face_id = path.stem.split("__", 1)
                    files[f"faces/{face_id}.png"] = path.read_bytes()
                    rows.append(f"faces/{face_id}.png,{label}")
                    sender = path.with_suffix(".sender")
                    senders[f"faces/{face_id}.png"] = sender.read_text() if sender.exists() else "unknown"
                files[LABELS_FILE] = ("\n".join(rows) + "\n").encode()
                files[SENDERS_FILE] = json.dumps(senders, indent=1, sort_keys=True).encode()
            digest = hashlib.sha256("\n".join(p.name for p in pending).encode()).hexdigest()[:12]
            name = f"{self.batch_prefix}{digest}-{len(pending)}"
            try:
                where = self._deliver(self.settings, name, files)
            except Exception as error:  # noqa: BLE001 - the faces are safe on disk; the next correction retries
                self.last_error = f"{type(error).__name__}: {error}"
                log.error(
                    f"{len(pending)} corrected faces could not go to the landing zone ({self.last_error}); "
                    f"they stay in {self.pending_dir} and the next correction tries again"
                )
                return None
            self.last_error = ""
            with self._lock:
                for path in pending:  # only once the batch is in the landing zone
                    path.unlink(missing_ok=True)
                    path.with_suffix(".sender").unlink(missing_ok=True)
            by_sender = dict(Counter(senders.values()).most_common())
            record = {"time": time.time(), "batch": name, "faces": len(pending), "where": where, "senders": by_sender}
            with (self.folder / "delivered.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            log.info(f"{len(pending)} corrected faces delivered to the landing zone as {where}")
            return where
        finally:
            self._delivering.release()

    def counts(self) -> dict:
        """For the model panel: faces waiting, the batch size, and the batches sent so far."""
        delivered = []
        journal = self.folder / "delivered.jsonl"
        if journal.is_file():
            for line in journal.read_text().splitlines():
                try:
                    delivered.append(json.loads(line))
                except ValueError:  # a line torn by a crash: the others still count
                    continue
        return {
            "pending": len(self._pending()),
            "per_batch": self.per_batch,
            "delivered_batches": len(delivered),
            "delivered_faces": sum(int(d.get("faces", 0)) for d in delivered),
            "last_batch": delivered[-1] if delivered else None,
            **({"last_error": self.last_error} if self.last_error else {}),
        }
