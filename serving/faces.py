"""Face analysis for ordinary photos and videos: find faces, crop them to 48x48 grey, classify.

The detector is OpenCV's frontal-face Haar cascade, which ships inside the opencv-python-headless
wheel (no download at run time). Every face of a photo, or of all sampled frames of a video chunk,
is classified in one batch through the model's `serving_pixels` signature.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from moodloop.contracts import EMOTIONS, FACE_SIZE


class BadMediaError(ValueError):
    """The upload is not an image or video we can read safely; the message says why."""


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    width: int
    height: int

    def box(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


class FaceDetector:
    def __init__(self, min_size: int = 24) -> None:
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self._cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade could not be loaded from the opencv wheel")
        self.min_size = min_size

    def detect(self, grey: np.ndarray) -> list[Face]:
        # Large photos are searched at <= 1024 px on the long side (faster, same faces), boxes scaled back.
        scale = min(1.0, 1024 / max(grey.shape))
        small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
        found = self._cascade.detectMultiScale(
            cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size)
        )
        faces = [Face(*(int(round(v / scale)) for v in box)) for box in (found if len(found) else [])]
        return sorted(faces, key=lambda f: (f.x, f.y))


def crop_faces(grey: np.ndarray, faces: list[Face]) -> np.ndarray:
    """[N, 48, 48] uint8 crops, the FER2013 way: the square face box, grey, resized."""
    crops = np.zeros((len(faces), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for i, face in enumerate(faces):
        patch = grey[face.y : face.y + face.height, face.x : face.x + face.width]
        crops[i] = cv2.resize(patch, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return crops


def decode_photo(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded photo -> RGB array. The size is checked from the header before any pixel is decoded
    (decompression bombs); truncated or non-image data raises BadMediaError."""
    if not data:
        raise BadMediaError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadMediaError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            image.load()
            return np.asarray(image.convert("RGB"))
    except BadMediaError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as error:
        raise BadMediaError(f"not a readable image: {error}") from None


def _face_results(faces: list[Face], probabilities: np.ndarray) -> list[dict]:
    results = []
    for face, probs in zip(faces, probabilities, strict=True):
        top = int(np.argmax(probs))
        results.append(
            {
                "box": face.box(),
                "emotion": EMOTIONS[top],
                "confidence": round(float(probs[top]), 4),
                "probabilities": {e: round(float(p), 4) for e, p in zip(EMOTIONS, probs, strict=True)},
            }
        )
    return results


Classify = Callable[[np.ndarray, list[dict]], np.ndarray]  # crops [N,48,48], face context -> [N,7]


def _draw(rgb: np.ndarray, faces: list[dict]) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, round(max(bgr.shape[:2]) / 400))
    for face in faces:
        b = face["box"]
        cv2.rectangle(bgr, (b["x"], b["y"]), (b["x"] + b["width"], b["y"] + b["height"]), (0, 220, 255), thickness)
        text = f"{face['emotion']} {face['confidence']:.2f}"
        scale = max(0.5, b["width"] / 180)
        cv2.putText(bgr, text, (b["x"], max(15, b["y"] - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 220, 255), thickness)
    return bgr


def analyze_photo(
    data: bytes, detector: FaceDetector, classify: Classify, max_pixels: int, annotate: bool = False
) -> tuple[dict, bytes | None]:
    rgb = decode_photo(data, max_pixels)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    faces = detector.detect(grey)
    area = grey.shape[0] * grey.shape[1]
    context = [{"face_width": f.width, "face_area_ratio": f.width * f.height / area} for f in faces]
    probabilities = classify(crop_faces(grey, faces), context) if faces else np.zeros((0, len(EMOTIONS)))
    result = {"width": int(grey.shape[1]), "height": int(grey.shape[0]), "faces": _face_results(faces, probabilities)}
    image = None
    if annotate:
        ok, encoded = cv2.imencode(".jpg", _draw(rgb, result["faces"]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        image = encoded.tobytes() if ok else None
    return result, image


def analyze_video(
    data: bytes,
    detector: FaceDetector,
    classify: Classify,
    max_pixels: int,
    every_seconds: float = 0.5,
    max_samples: int = 600,
    annotate: bool = False,
) -> tuple[dict, bytes | None]:
    """A timeline: one entry per sampled frame (every `every_seconds`), with its faces and emotions."""
    if not data:
        raise BadMediaError("the upload is empty")
    with tempfile.TemporaryDirectory(prefix="moodloop-video-") as tmp:
        source = Path(tmp) / "upload"
        source.write_bytes(data)
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise BadMediaError("not a readable video (OpenCV/FFmpeg could not open it)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_pixels:
            raise BadMediaError(f"video frames are {width}x{height}; the limit is {max_pixels} pixels")
        step = max(1, round(fps * every_seconds))
        writer = None
        if annotate:
            out_path = Path(tmp) / "annotated.mp4"
            writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps / step, (width, height))
        timeline, index, frames_read = [], 0, 0
        try:
            while len(timeline) < max_samples:
                ok, frame = capture.read()
                if not ok:
                    break
                frames_read += 1
                if index % step == 0:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                    faces = detector.detect(grey)
                    context = [
                        {"face_width": f.width, "face_area_ratio": f.width * f.height / grey.size} for f in faces
                    ]
                    probabilities = classify(crop_faces(grey, faces), context) if faces else np.zeros((0, 7))
                    entry = {
                        "frame": index,
                        "time": round(index / fps, 3),
                        "faces": _face_results(faces, probabilities),
                    }
                    timeline.append(entry)
                    if writer is not None:
                        writer.write(_draw(rgb, entry["faces"]))
                index += 1
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames_read == 0:
            raise BadMediaError("the video holds no readable frame")
        video = out_path.read_bytes() if annotate else None
    summary = {e: 0 for e in EMOTIONS}
    for entry in timeline:
        for face in entry["faces"]:
            summary[face["emotion"]] += 1
    return {
        "fps": round(fps, 3),
        "width": width,
        "height": height,
        "sampled_every_seconds": every_seconds,
        "frames_read": frames_read,
        "timeline": timeline,
        "emotion_counts": summary,
    }, video
