"""The Label tab's desk: the labelling queue the drift job chose (monitoring/labelling.py, the
labelling-queue contract in moodloop/core/contracts.py), one face at a time, and the answers.

An answer is an emotion, "not_a_face" or "skip". Every answer goes to `answers.jsonl` (so a face is
not asked again, also after a restart or a new queue). Emotions are also logged as feedback for
the prediction (live accuracy, the canary's labels) and gather like the page's corrections; at
MOODLOOP_LABEL_BUDGET faces they land as one batch `labelled-<id>` (images + labels.csv, the
landing contract), whose ingest starts the retrain; `deliver_now` sends what has gathered earlier.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from moodloop.core import labelling_journal
from moodloop.core.contracts import (
    EMOTIONS,
    LABEL_NOT_A_FACE,
    LABEL_SKIP,
    LABELLED_BATCH_PREFIX,
    LABELLING_ANSWERS,
    LABELLING_FACES,
    LABELLING_QUEUE,
)
from moodloop.core.settings import Settings
from serving.corrections import Corrections

ANSWERS = (*EMOTIONS, LABEL_NOT_A_FACE, LABEL_SKIP)


class LabelRefused(ValueError):
    """An answer the desk cannot take: unknown face, unknown answer."""


class LabellingDesk:
    def __init__(self, settings: Settings, background: bool = True) -> None:
        self.folder = Path(settings.labelling_dir)
        self.budget = settings.drift.label_budget
        self.labelled = Corrections(
            settings,
            background=background,
            folder=self.folder / "answers",
            per_batch=self.budget,
            batch_prefix=LABELLED_BATCH_PREFIX,
        )
        self._lock = threading.Lock()  # answers.jsonl and the answered set
        self._answered: set[str] | None = None

    def _queue(self) -> dict:
        path = self.folder / LABELLING_QUEUE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or being replaced: an empty queue for now
            return {"faces": []}

    def _answered_ids(self) -> set[str]:
        if self._answered is None:
            self._answered = labelling_journal.answered_ids(self.folder)
        return self._answered

    def summary(self, queue: dict | None = None) -> dict:
        """The queue's counts (`queue`: one already read, so a request reads the file once)."""
        queue = self._queue() if queue is None else queue
        with self._lock:
            answered = self._answered_ids()
            waiting = [f for f in queue.get("faces", []) if f["face_id"] not in answered]
        return {
            "queued": len(queue.get("faces", [])),
            "waiting": len(waiting),
            "reason": queue.get("reason"),
            "strategy": queue.get("strategy"),
            "created": queue.get("created"),
            "budget": self.budget,
            "labelled": self.labelled.counts(),
        }

    def next_face(self) -> dict:
        """The first queued face nobody has answered, with its picture (a 48x48 PNG, base64);
        {"face": None} when none is waiting."""
        queue = self._queue()
        with self._lock:
            answered = self._answered_ids()
            waiting = [f for f in queue.get("faces", []) if f["face_id"] not in answered]
        for face in waiting:
            png = self.folder / LABELLING_FACES / f"{face['face_id']}.png"
            if png.is_file():  # a queue being replaced may have lost it: ask the next
                picture = base64.b64encode(png.read_bytes()).decode()
                return {"face": face | {"png_b64": picture}, **self.summary(queue)}
        return {"face": None, **self.summary(queue)}

    def answer(self, face_id: str, answer: str, sender: str) -> tuple[dict, bool]:
        """Record one answer. -> (the queued face, whether it completed a batch)."""
        if answer not in ANSWERS:
            raise LabelRefused(f"answer {answer!r} is not one of {', '.join(ANSWERS)}")
        face = next((f for f in self._queue().get("faces", []) if f["face_id"] == face_id), None)
        png = self.folder / LABELLING_FACES / f"{face_id}.png"
        if face is None or not png.is_file():
            raise LabelRefused(f"face {face_id!r} is not in the labelling queue")
        complete = False
        if answer in EMOTIONS:
            crop = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
            complete = self.labelled.add(crop, answer, face["request_id"], int(face["instance"]), sender)
        record = {"time": time.time(), "face_id": face_id, "answer": answer, "sender": sender}
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / LABELLING_ANSWERS).open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._answered_ids().add(face_id)
        return face, complete

    def deliver_now(self) -> str | None:
        """The labelled faces gathered so far, as a batch now (fewer than the budget)."""
        return self.labelled.deliver_pending(at_least=1)
