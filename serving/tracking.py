"""People followed across a video's sampled frames: the same person keeps one id, so the emotion
timeline can be read per person.

`IouTracker` is a greedy IoU tracker (SORT's matching without its Kalman filter): each face of a
sampled frame joins the live track whose last box overlaps it most (IoU >= `min_iou`), the best
overlaps first; a face that joins none starts a new person; a track unseen for more than
`max_missed` sampled frames ends (a person who comes back later is a new person). That is enough
for interviews, classrooms and webcams, where people move little between samples (0.5 s apart by
default); fast crossings can swap ids.

`people_summary` and `timeline_csv` turn a tracked timeline into what people read or export.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import deque

import numpy as np

from moodloop.core.contracts import EMOTIONS

Box = tuple[float, float, float, float]  # x, y, width, height


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    return overlap / (a[2] * a[3] + b[2] * b[3] - overlap)


@dataclasses.dataclass
class Track:
    person: int
    box: Box
    missed: int = 0  # sampled frames since it was last seen


class IouTracker:
    def __init__(self, min_iou: float = 0.3, max_missed: int = 2) -> None:
        if not 0.0 < min_iou <= 1.0 or max_missed < 0:
            raise ValueError("min_iou must be in (0, 1] and max_missed >= 0")
        self.min_iou = min_iou
        self.max_missed = max_missed
        self._tracks: list[Track] = []
        self._next_person = 1

    def update(self, boxes: list[Box]) -> list[int]:
        """The person id of each box of the next sampled frame, in the order given."""
        pairs = sorted(
            (
                (overlap, t, b)
                for t, track in enumerate(self._tracks)
                for b, box in enumerate(boxes)
                if (overlap := iou(track.box, box)) >= self.min_iou
            ),
            reverse=True,
        )
        people: list[int | None] = [None] * len(boxes)
        matched_tracks: set[int] = set()
        for _, t, b in pairs:
            if t in matched_tracks or people[b] is not None:
                continue
            matched_tracks.add(t)
            track = self._tracks[t]
            track.box, track.missed = boxes[b], 0
            people[b] = track.person
        for t, track in enumerate(self._tracks):
            if t not in matched_tracks:
                track.missed += 1
        self._tracks = [track for track in self._tracks if track.missed <= self.max_missed]
        for b, person in enumerate(people):
            if person is None:
                self._tracks.append(Track(self._next_person, boxes[b]))
                people[b] = self._next_person
                self._next_person += 1
        return [int(person) for person in people]  # every slot is filled by now


class Smoother:
    """A moving average of each person's probabilities over their last `window` sampled frames:
    one odd frame (a blink, motion blur) does not flip the reported emotion."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the smoothing window must be at least 1 frame")
        self.window = window
        self._recent: dict[int, deque[np.ndarray]] = {}

    def update(self, person: int, probabilities: np.ndarray) -> np.ndarray:
        recent = self._recent.setdefault(person, deque(maxlen=self.window))
        recent.append(np.asarray(probabilities, dtype=np.float64))
        return np.mean(recent, axis=0)


def people_summary(timeline: list[dict]) -> list[dict]:
    """One entry per person: when they were seen, in how many sampled frames, and the share of
    those frames per emotion (the smoothed emotion when the timeline has one)."""
    people: dict[int, dict] = {}
    for entry in timeline:
        for face in entry["faces"]:
            first = {"person": face["person"], "first_seen": entry["time"], "frames": 0}
            person = people.setdefault(face["person"], {**first, "counts": dict.fromkeys(EMOTIONS, 0)})
            person["last_seen"] = entry["time"]
            person["frames"] += 1
            person["counts"][face.get("smoothed_emotion", face["emotion"])] += 1
    summary = []
    for person in people.values():
        counts = person.pop("counts")
        person["emotions"] = {e: round(n / person["frames"], 3) for e, n in counts.items() if n}
        person["dominant_emotion"] = max(counts, key=counts.get)
        summary.append(person)
    return summary


CSV_COLUMNS = (
    "time",
    "frame",
    "person",
    "emotion",
    "confidence",
    "uncertain",
    "smoothed_emotion",
    "x",
    "y",
    "width",
    "height",
    *(f"prob_{e}" for e in EMOTIONS),
)


def timeline_csv(timeline: list[dict]) -> str:
    """The timeline as CSV, one row per face per sampled frame (for spreadsheets and pandas)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in timeline:
        for face in entry["faces"]:
            writer.writerow(
                {
                    "time": entry["time"],
                    "frame": entry["frame"],
                    "person": face["person"],
                    "emotion": face["emotion"],
                    "confidence": face["confidence"],
                    "uncertain": face["uncertain"],
                    "smoothed_emotion": face.get("smoothed_emotion", ""),
                    **{k: face["box"][k] for k in ("x", "y", "width", "height")},
                    **{f"prob_{e}": p for e, p in face["probabilities"].items()},
                }
            )
    return out.getvalue()
