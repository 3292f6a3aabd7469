"""The gateway's `tfserving` backend speaks TF Serving's gRPC protocol. Here it talks to a second
gateway's gRPC port (the same protocol TF Serving serves); CI also runs it against the real
tensorflow/serving image (job serving-tfserving)."""

from __future__ import annotations

import dataclasses

import httpx
import numpy as np

from moodloop import models_config
from serving.gateway import serve_in_thread

PIXELS = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((2, 48, 48), int).tolist()}}


def test_a_gateway_in_front_of_a_tf_serving_protocol_server(running, gateway_settings, tmp_path):
    front_settings = dataclasses.replace(
        gateway_settings,
        serving=dataclasses.replace(
            gateway_settings.serving, backend="tfserving", tfserving_target=f"127.0.0.1:{running.grpc_port}"
        ),
        inference_log_url=str(tmp_path / "front-log"),
        traffic_file=tmp_path / "traffic.json",
    )
    with serve_in_thread(front_settings) as front:
        direct = httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30)
        proxied = httpx.Client(base_url=f"http://127.0.0.1:{front.rest_port}", timeout=30)
        for path in ("/v1/models/emotion/versions/1:predict", "/v1/models/emotion:predict"):
            assert proxied.post(path, json=PIXELS).json() == direct.post(path, json=PIXELS).json()
        assert proxied.get("/v1/models/emotion").json() == direct.get("/v1/models/emotion").json()
        missing = proxied.post("/v1/models/emotion/versions/77:predict", json=PIXELS)
        assert missing.status_code == 404 and "Specific(emotion, 77)" in missing.json()["error"]

        # Labels written into models.config reach the server through HandleReloadConfigRequest.
        original = gateway_settings.serving_config.read_text()
        try:
            models_config.set_label(gateway_settings.serving_config, "emotion", "stable", 1)
            front.dataplane.reload()
            assert running.dataplane.backend.labels("emotion") == {"stable": 1}
            stable = proxied.post("/v1/models/emotion/labels/stable:predict", json=PIXELS).json()
            assert stable == direct.post("/v1/models/emotion/versions/1:predict", json=PIXELS).json()
        finally:
            gateway_settings.serving_config.write_text(original)
            running.dataplane.reload()
        direct.close()
        proxied.close()
