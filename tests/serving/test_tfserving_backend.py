"""The gateway's `tfserving` backend speaks TF Serving's gRPC protocol. Here it talks to a second
gateway's gRPC port (the same protocol TF Serving serves); CI also runs it against the real
tensorflow/serving image (job serving-tfserving). Replicas: two such stand-ins, one killed."""

from __future__ import annotations

import dataclasses
import time

import httpx
import numpy as np

from moodloop.core import models_config
from moodloop.core.settings import Settings
from serving.gateway import serve_in_thread

PIXELS = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((2, 48, 48), int).tolist()}}


def _wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not in {timeout:.0f} s: {what}"
        time.sleep(0.05)


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


def test_two_replicas_share_the_load_and_one_killed_under_load_fails_no_request(model_base, tmp_path):
    """Two stand-in TF Serving servers (gateways in processes of their own, speaking TF Serving's
    gRPC on one model base), a gateway in front with both as targets and clients sending without
    pause. SIGKILL one replica: no client request fails (the in-flight ones are retried on the
    other), the dead one leaves the rotation, and the rest goes to the survivor."""
    import os
    import signal
    import threading

    from tests.serving.conftest import start_gateway_process

    def replica(name: str):
        env = {
            **os.environ,
            "MOODLOOP_HOME": str(tmp_path / name),
            "MOODLOOP_MODEL_BASE": str(model_base),
            "MOODLOOP_REST_PORT": "0",
            "MOODLOOP_GRPC_PORT": "0",
        }
        return start_gateway_process(env)

    replicas = [replica("replica-a"), replica("replica-b")]
    home = tmp_path / "front"
    front_settings = Settings.from_env(
        home=home,
        model_base=model_base,
        serving_config=home / "models.config",
        traffic_file=home / "traffic.json",
        inference_log_url=str(home / "inference_log"),
        serving={
            "backend": "tfserving",
            "tfserving_target": ",".join(f"127.0.0.1:{r.grpc_port}" for r in replicas),
            "tfserving_health_seconds": 0.2,
            "rest_port": 0,
            "grpc_port": 0,
        },
    )
    try:
        with serve_in_thread(front_settings) as front:
            backend = front.dataplane.backend
            outcomes: list[int] = []
            stop = threading.Event()

            def client() -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{front.rest_port}", timeout=30) as own:
                    while not stop.is_set():
                        outcomes.append(own.post("/v1/models/emotion:predict", json=PIXELS).status_code)

            clients = [threading.Thread(target=client) for _ in range(4)]
            for thread in clients:
                thread.start()
            # Polled, not slept: on a loaded machine the clients and the health check run late.
            _wait_until(lambda: all(r["calls"] > 20 for r in backend.replica_states()), "both replicas took a share")
            before_kill = {r["target"]: r["calls"] for r in backend.replica_states()}
            replicas[0].process.send_signal(signal.SIGKILL)
            replicas[0].process.wait(timeout=30)
            _wait_until(lambda: not backend.replica_states()[0]["healthy"], "the health check saw the dead replica")
            time.sleep(0.5)  # a request picked before the health check saw it may still be counted
            dead_calls = backend.replica_states()[0]["calls"]
            survivor = backend.replica_states()[1]["calls"]
            _wait_until(lambda: backend.replica_states()[1]["calls"] > survivor + 20, "the survivor took the load")
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
            states = backend.replica_states()
    finally:
        for r in replicas:
            r.process.kill()
            r.process.wait(timeout=30)

    assert len(outcomes) > 40 and set(outcomes) == {200}, sorted(set(outcomes))
    assert all(calls > 20 for calls in before_kill.values()), before_kill  # both took a share
    assert not states[0]["healthy"] and "UNAVAILABLE" in states[0]["reason"], states[0]
    assert states[0]["calls"] == dead_calls  # nothing sent to the dead one once it was seen dead
    assert states[1]["healthy"] and states[1]["calls"] > before_kill[states[1]["target"]] + 20
