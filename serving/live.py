"""`moodloop live`: the faces page's live analysis from the command line, on a camera or a video file.

Each frame: faces found (the gateway's detector, on a copy downscaled to --width, as the page sends
frames), cropped from the full frame, classified, drawn. The model is either the stable version
on this machine (loaded in-process: no server needed, the way a small device runs it) or a
running gateway (--gateway URL: frames go to /v1/faces:analyze, so they are logged, split by the
canary and can take feedback). A window shows the result when OpenCV can open one; otherwise, or
with --out, the annotated frames are written as a video. Frames per second are printed as it runs
and at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from moodloop.core import models_config
from moodloop.core.contracts import OUTPUT_PROBABILITIES, SIGNATURE_PIXELS
from moodloop.core.edge_runtime import EdgeModel
from moodloop.core.rollout import STABLE, Rollout
from moodloop.core.settings import Settings
from serving.faces import FACE_DETECTORS, crop_faces, draw_faces, face_results, make_face_detector
from serving.version_assets import published_edge_file

WINDOW = "moodloop live (q to quit)"


class LocalModel:
    """The stable version (else the newest) of the model base: through its serving_pixels signature,
    or with `tflite` ("float16", "int8") through its published edge file on the LiteRT interpreter,
    as a device runs it."""

    def __init__(self, settings: Settings, tflite: str | None = None) -> None:
        rollout = Rollout.from_settings(settings)
        self.version = rollout.champion(settings.model_base)
        if self.version is None:
            raise SystemExit(f"no model version under {settings.model_base}: train one first (make run)")
        folder = models_config.version_path(settings.model_base, self.version)
        chosen = STABLE if rollout.labels().get(STABLE) == self.version else "newest"
        self.described = f"version {self.version} ({chosen}) of {settings.model_base}"
        self._edge = None
        if tflite:
            try:
                self._edge = EdgeModel(published_edge_file(folder, f"{tflite}.tflite").read_bytes())
            except LookupError as error:
                raise SystemExit(str(error)) from None
            self.described = f"{tflite}.tflite of {self.described} (LiteRT)"
            return
        import tensorflow as tf

        signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_PIXELS]
        self._predict = lambda crops: signature(pixels=tf.constant(crops))[OUTPUT_PROBABILITIES].numpy()

    def classify(self, crops: np.ndarray) -> np.ndarray:
        return self._edge.probabilities(crops) if self._edge is not None else self._predict(crops)


class Analyser:
    """One frame in, its faces out (the gateway's JSON shape), locally or through a gateway."""

    def __init__(
        self, settings: Settings, detector: str, width: int, gateway: str | None, tflite: str | None = None
    ) -> None:
        self.width, self.gateway = width, gateway.rstrip("/") if gateway else None
        self.min_confidence = settings.serving.min_confidence
        if self.gateway:
            self.described = f"the gateway at {self.gateway}"
        else:
            self.detector = make_face_detector(detector)
            self.model = LocalModel(settings, tflite)
            self.described = f"{self.model.described}, faces by {detector}"

    def faces(self, bgr: np.ndarray) -> list[dict]:
        scale = min(1.0, self.width / bgr.shape[1])
        small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else bgr
        if self.gateway:
            return [_scaled_result(face, 1 / scale) for face in self._ask_gateway(small)]
        found = [face.scaled(1 / scale) for face in self.detector.detect(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))]
        if not found:
            return []
        probabilities = self.model.classify(crop_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), found))
        return face_results(found, probabilities, self.min_confidence)

    def _ask_gateway(self, bgr: np.ndarray) -> list[dict]:
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        request = urllib.request.Request(
            f"{self.gateway}/v1/faces:analyze",
            data=jpeg.tobytes(),
            headers={"Content-Type": "image/jpeg", "x-client-id": "moodloop-live"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["faces"]
        except urllib.error.HTTPError as error:
            raise SystemExit(
                f"the gateway refused a frame: {error.code} {error.read().decode(errors='replace')}"
            ) from None
        except urllib.error.URLError as error:
            raise SystemExit(f"the gateway at {self.gateway} cannot be reached: {error.reason}") from None


def _scaled_result(face: dict, factor: float) -> dict:
    box = {k: int(round(v * factor)) for k, v in face["box"].items()}
    scaled = {**face, "box": box}
    if "landmarks" in face:
        scaled["landmarks"] = {k: [v * factor for v in point] for k, point in face["landmarks"].items()}
    return scaled


def _window_available() -> bool:
    """Whether OpenCV can show a window here: not with the headless build moodloop installs, nor
    without a display."""
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        return False
    return True


class Recording:
    """The annotated frames as an MP4 (nothing when `out` is None). At `fps`, or, for a camera
    (fps None), at the rate measured over its first RATE_FRAMES frames."""

    RATE_FRAMES = 10

    def __init__(self, out: Path | None, fps: float | None) -> None:
        self.out, self.fps = out, fps
        self.writer, self.waiting, self.started = None, [], time.perf_counter()

    def add(self, frame: np.ndarray) -> None:
        if self.out is None:
            return
        if self.writer is not None:
            self.writer.write(frame)
            return
        self.waiting.append(frame)
        if self.fps is not None or len(self.waiting) >= self.RATE_FRAMES:
            self._open()

    def _open(self) -> None:
        rate = self.fps or len(self.waiting) / max(time.perf_counter() - self.started, 1e-3)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        height, width = self.waiting[0].shape[:2]
        self.writer = cv2.VideoWriter(str(self.out), cv2.VideoWriter_fourcc(*"mp4v"), rate, (width, height))
        for frame in self.waiting:
            self.writer.write(frame)
        self.waiting.clear()

    def close(self) -> None:
        if self.waiting and self.writer is None:  # a camera stopped before its rate was fixed
            self._open()
        if self.writer is not None:
            self.writer.release()


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a width: use a number of pixels above 0")
    return value


def parse_args(argv: list[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="moodloop live",
        description="Find every face in a camera's or a video's frames, with its emotion, as they play.",
        epilog="Examples:\n  moodloop live --video clip.mp4 --out annotated.mp4\n  moodloop live --camera 0\n"
        "  moodloop live --video clip.mp4 --tflite int8   # the edge model, as a device runs it\n"
        "  moodloop live --camera 0 --gateway http://127.0.0.1:8501   # through the running gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", type=int, metavar="INDEX", help="a camera by its OpenCV index (0: the first)")
    source.add_argument("--video", type=Path, metavar="FILE", help="a video file (MP4, AVI, MOV, ...)")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the annotated frames as an MP4 (default without a window)"
    )
    parser.add_argument(
        "--width", type=_positive, default=320, help="detect faces on frames downscaled to this width (default 320)"
    )
    parser.add_argument(
        "--detector",
        choices=sorted(FACE_DETECTORS),
        default=settings.serving.face_detector,
        help=f"face detector (default {settings.serving.face_detector}, MOODLOOP_FACE_DETECTOR)",
    )
    parser.add_argument(
        "--gateway", metavar="URL", help="classify through a running gateway, e.g. http://127.0.0.1:8501"
    )
    parser.add_argument(
        "--tflite",
        choices=("float16", "int8"),
        help="run the stable version's published edge file (TFLite on the LiteRT interpreter), not the SavedModel",
    )
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (a camera runs until q or Ctrl+C)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    if args.video is not None and not args.video.is_file():
        print(f"error: no such video: {args.video}", file=sys.stderr)
        return 2
    capture = cv2.VideoCapture(str(args.video) if args.video is not None else args.camera)
    if not capture.isOpened():
        what = f"video {args.video}" if args.video is not None else f"camera {args.camera}"
        print(f"error: OpenCV cannot open {what}", file=sys.stderr)
        return 2
    if args.tflite and args.gateway:
        print("error: --tflite runs the model here; --gateway sends frames to a server: choose one", file=sys.stderr)
        return 2
    analyser = Analyser(settings, args.detector, args.width, args.gateway, args.tflite)
    window = args.out is None and _window_available()
    out = args.out
    if not window and out is None:
        out = settings.home / "live" / f"live-{time.strftime('%Y%m%dT%H%M%S')}.mp4"
        print(f"no window can be opened here (no display, or OpenCV's headless build): writing {out}")
    print(f"analysing {args.video or f'camera {args.camera}'} with {analyser.described}")
    # A file's frames are all analysed: its own rate. A camera's are analysed as fast as they can
    # be: the recording plays at the measured rate, not the camera's.
    recording = Recording(out, (capture.get(cv2.CAP_PROP_FPS) or 25.0) if args.video is not None else None)
    frames, started, shown = 0, time.perf_counter(), 0.0
    try:
        while args.seconds is None or time.perf_counter() - started < args.seconds:
            ok, frame = capture.read()
            if not ok:
                break
            faces = analyser.faces(frame)
            annotated = draw_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), faces)
            frames += 1
            recording.add(annotated)
            if window:
                cv2.imshow(WINDOW, annotated)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
            elapsed = time.perf_counter() - started
            if elapsed - shown >= 1.0:
                shown = elapsed
                seen = ", ".join(f"{f['emotion']} {f['confidence']:.2f}" for f in faces) or "no face"
                print(f"  {frames / elapsed:5.1f} frames/s  frame {frames}: {seen}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        capture.release()
        recording.close()
        if window:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - started
    print(
        f"{frames} frames in {elapsed:.1f} s: {frames / max(elapsed, 1e-9):.1f} frames/s"
        + (f"; wrote {out}" if out else "")
    )
    return 0 if frames else 1


if __name__ == "__main__":
    sys.exit(main())
