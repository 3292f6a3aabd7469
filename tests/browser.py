"""A real browser for the page tests: Debian's Chromium through Playwright, and where the tests
keep their screenshots (test artifacts: `$MOODLOOP_TEST_ARTIFACTS`, default `test-artifacts/`;
CI uploads the folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Debian's chromium (make setup installs it); GitHub's runners have Google Chrome instead.
CHROMIUM = os.environ.get("MOODLOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MOODLOOP_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def chromium(playwright, *extra_args: str):
    """Debian's Chromium, headless, with the flags this machine's closed network needs."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            *extra_args,
        ],
    )


def artifact(group: str, name: str) -> Path:
    """Where a test keeps a screenshot or file for people to look at after the run."""
    folder = ARTIFACTS / group
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def fake_camera_file(video: Path, target: Path, size: tuple[int, int] = (640, 480), seconds: float = 4.0) -> Path:
    """A video as a YUV4MPEG2 (.y4m) file, the format Chromium's fake camera plays in a loop
    (--use-file-for-fake-video-capture), scaled to `size` (what a webcam gives). Pipeline env only
    (OpenCV); the stack test imports this module from the orchestration env."""
    import cv2
    import numpy as np

    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = size
    with open(target, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{round(fps)}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(int(seconds * fps)):
            ok, frame = capture.read()
            if not ok:
                break
            planes = cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YUV_I420)
            out.write(b"FRAME\n" + np.ascontiguousarray(planes).tobytes())
    capture.release()
    return target
