"""Versions coming and going under the model base path while requests flow, and the inference log's
guarantees (bounded, never blocking, flushed on close, S3 over boto3)."""

from __future__ import annotations

import io
import secrets
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from components.untrained_model import export_version
from moodloop.core.log_records import Prediction
from moodloop.core.settings import Settings, s3_client
from moodloop.local.s3server import free_port, start_seaweedfs, stop, wait_for_s3
from serving.gateway import serve_in_thread
from serving.inference_log import InferenceLog
from tests.serving.conftest import start_gateway_process

PIXELS = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((1, 48, 48), int).tolist()}}


def _settings(tmp_path, base) -> Settings:
    return Settings.from_env(
        home=tmp_path / "home",
        model_base=base,
        serving_config=tmp_path / "home" / "models.config",
        inference_log_url=str(tmp_path / "log"),
        serving={"rest_port": 0, "grpc_port": 0, "poll_seconds": 0.3},
    )


def _status(client) -> dict[str, tuple[str, str]]:
    states = client.get("/v1/models/emotion").json()["model_version_status"]
    return {s["version"]: (s["state"], s["status"]["error_message"]) for s in states}


def test_new_version_hot_loads_while_requests_flow_and_broken_ones_are_refused(tmp_path, model_base):
    base = tmp_path / "emotion"
    base.mkdir()
    (base / "1").symlink_to(model_base / "1", target_is_directory=True)
    with (
        serve_in_thread(_settings(tmp_path, base)) as running,
        httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30) as client,
    ):
        running.dataplane.backend.wait_for_version("emotion", 1)
        seen, failures, stop_flag = set(), [], threading.Event()

        def traffic():
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                while not stop_flag.is_set():
                    response = own.post("/v1/models/emotion:predict", json=PIXELS)
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        seen.add(own.get("/v1/models/emotion").json()["model_version_status"][0]["version"])

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.5)
            export_version(base, 2, seed=7)  # staged, then renamed into place, as the Pusher does
            running.dataplane.backend.wait_for_version("emotion", 2, timeout=60)
            time.sleep(0.5)
            # While traffic flows: a half-written version (no saved_model.pb yet) and a corrupt one.
            (base / "3" / "variables").mkdir(parents=True)
            (base / "4").mkdir()
            (base / "4" / "saved_model.pb").write_bytes(b"\x00 half written garbage")
            # traffic flows until the version poller has tried (and refused) the corrupt one
            _wait(lambda: _status(client).get("4", ("",))[0] == "END")
            time.sleep(0.5)
        finally:
            stop_flag.set()
            for worker in workers:
                worker.join()
        assert failures == [], failures[:3]
        assert {"1", "2"} <= seen  # answered by 1, then by 2, without a failed request
        assert client.post("/v1/models/emotion/versions/2:predict", json=PIXELS).status_code == 200

        # The half-written version is invisible; the corrupt one is refused with its reason in the
        # status; no request failed meanwhile (above) and the good versions keep serving.
        states = _status(client)
        assert "3" not in states
        assert states["4"][0] == "END" and "Error" in states["4"][1], states["4"]
        assert states["2"] == ("AVAILABLE", "")
        assert client.post("/v1/models/emotion:predict", json=PIXELS).status_code == 200
        assert client.post("/v1/models/emotion/versions/4:predict", json=PIXELS).status_code == 404


def _prediction(i: int) -> Prediction:
    return Prediction(
        request_id=f"r{i}",
        instance=0,
        client_id="c",
        model_name="emotion",
        model_version=1,
        model_label="stable",
        signature="serving_pixels",
        api="rest",
        latency_ms=1.0,
        probabilities=np.full(7, 1 / 7),
        pixels=np.full((48, 48), 128, np.uint8),
    )


def test_inference_log_is_bounded_never_blocks_and_flushes_on_close(tmp_path):
    log = InferenceLog(str(tmp_path / "log"), buffer_records=10, flush_seconds=60)
    release = threading.Event()
    original_put = log.sink.put
    log.sink.put = lambda name, data: (release.wait(), original_put(name, data))[1]  # a stalled sink
    results: list[int] = []
    producer = threading.Thread(target=lambda: results.append(sum(log.log(_prediction(i)) for i in range(50))))
    producer.start()
    producer.join(timeout=30)
    # The sink stays stalled until `release`: a log() that waited for it would still be waiting.
    assert not producer.is_alive(), "log() waited for the stalled sink"
    (accepted,) = results
    assert accepted == 10 and log.dropped == 50 - accepted  # overflow is counted, not hidden
    release.set()
    log.close()
    files = list((tmp_path / "log" / "predictions").rglob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    assert log.written == accepted == sum(t.num_rows for t in tables)
    assert all("date=" in str(f) and "hour=" in str(f) for f in files)
    assert tables[0].column("brightness").to_pylist()[0] == pytest.approx(128 / 255)


def test_inference_log_writes_parquet_to_s3(tmp_path):
    port, access, secret = free_port(), "test-" + secrets.token_hex(4), secrets.token_urlsafe(16)
    server = start_seaweedfs(tmp_path / "s3", port, access, secret, log_file=tmp_path / "weed.log")
    try:
        settings = Settings.from_env(
            home=tmp_path, s3={"endpoint_url": f"http://127.0.0.1:{port}", "access_key": access, "secret_key": secret}
        )
        client = s3_client(settings)
        wait_for_s3(client, "logs")
        log = InferenceLog("s3://logs/inference", flush_seconds=60, s3_client_factory=lambda: s3_client(settings))
        for i in range(5):
            log.log(_prediction(i))
        log.close()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="logs", Prefix="inference/")["Contents"]]
        assert len(keys) == 1 and keys[0].startswith("inference/predictions/date=")
        body = client.get_object(Bucket="logs", Key=keys[0])["Body"].read()
        assert pq.read_table(io.BytesIO(body)).column("request_id").to_pylist() == [f"r{i}" for i in range(5)]
    finally:
        stop(server)


def test_gateway_process_flushes_the_log_on_sigterm(tmp_path, model_base):
    import os
    import signal

    env = {
        **os.environ,
        "MOODLOOP_HOME": str(tmp_path / "home"),
        "MOODLOOP_MODEL_BASE": str(model_base),
        "MOODLOOP_REST_PORT": "0",
        "MOODLOOP_GRPC_PORT": "0",
        "MOODLOOP_LOG_FLUSH_SECONDS": "600",
    }
    gateway = start_gateway_process(env)
    process, port = gateway.process, gateway.rest_port
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/models/emotion:predict", json=PIXELS, timeout=30)
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        gateway.reader.join(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, gateway.lines
    assert "inference log: 1 records written" in "".join(gateway.lines)
    assert len(list((tmp_path / "home" / "inference_log" / "predictions").rglob("*.parquet"))) == 1


def test_a_gateway_killed_under_load_loses_at_most_a_flush_interval_and_no_file_is_half_read(tmp_path, model_base):
    """SIGKILL while clients are being answered, then a restart on the same log: every file the
    drift job can read is whole (files are written hidden, then renamed), every logged record was
    answered, and what was answered but not logged is at most about one flush interval of traffic."""
    import os
    import signal

    from moodloop.core.log_records import read_log

    home = tmp_path / "home"
    env = {
        **os.environ,
        "MOODLOOP_HOME": str(home),
        "MOODLOOP_MODEL_BASE": str(model_base),
        "MOODLOOP_REST_PORT": "0",
        "MOODLOOP_GRPC_PORT": "0",
        "MOODLOOP_LOG_FLUSH_SECONDS": "1",
    }
    gateway = start_gateway_process(env)
    process, port = gateway.process, gateway.rest_port
    answered: list[str] = []
    started = time.monotonic()

    def client() -> None:
        with httpx.Client(timeout=10) as own:
            while True:
                try:
                    response = own.post(f"http://127.0.0.1:{port}/v1/models/emotion:predict", json=PIXELS)
                except httpx.HTTPError:
                    return  # the gateway is gone
                if response.status_code == 200:
                    answered.append(response.headers["x-request-id"])

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(3.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    elapsed = time.monotonic() - started
    for thread in clients:
        thread.join(timeout=30)

    logged = set(read_log(home / "inference_log")["request_id"].to_pylist())  # every visible file reads whole
    lost = set(answered) - logged
    rate = len(answered) / elapsed
    print(
        f"{len(answered)} answered in {elapsed:.1f} s, {len(logged)} logged, {len(lost)} lost to SIGKILL "
        f"= {len(lost) / rate:.2f} s of traffic (flush interval 1 s)"
    )
    assert logged <= set(answered) and len(answered) > 50
    # What is lost: the records buffered since the last flush (one interval), and those of a flush
    # that was being written when the process died (on 2 shared cores it can take a good part of
    # the interval): at most two intervals of traffic.
    assert len(lost) <= rate * 2.0

    gateway = start_gateway_process(env)
    restarted, port = gateway.process, gateway.rest_port
    try:
        ids = [
            httpx.post(f"http://127.0.0.1:{port}/v1/models/emotion:predict", json=PIXELS, timeout=30).headers[
                "x-request-id"
            ]
            for _ in range(5)
        ]
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
    finally:
        restarted.kill()
    after = set(read_log(home / "inference_log")["request_id"].to_pylist())
    assert set(ids) <= after and logged <= after  # the restarted gateway logs beside the old files


def test_the_log_keeps_its_records_while_s3_is_down_and_writes_them_when_it_returns(tmp_path):
    """SeaweedFS stopped while the log flushes: nothing is written and nothing lost (within the
    buffer's bound; what overflows is counted); restarted, the kept records are written."""
    port, access, secret = free_port(), "test-" + secrets.token_hex(4), secrets.token_urlsafe(16)
    server = start_seaweedfs(tmp_path / "s3", port, access, secret, log_file=tmp_path / "weed.log")
    settings = Settings.from_env(
        home=tmp_path, s3={"endpoint_url": f"http://127.0.0.1:{port}", "access_key": access, "secret_key": secret}
    )
    client = s3_client(settings)
    log = None
    try:
        wait_for_s3(client, "logs")
        log = InferenceLog(
            "s3://logs/inference", buffer_records=150, flush_seconds=0.3, s3_client_factory=lambda: s3_client(settings)
        )
        for i in range(5):
            log.log(_prediction(i))
        _wait(lambda: log.written == 5)
        stop(server)
        for i in range(5, 205):  # 200 more while S3 is down: 150 fit in the buffer, 50 overflow
            log.log(_prediction(i))
        _wait(lambda: log.sink_failing)  # a flush failed (after the S3 client's own retries)
        time.sleep(1.0)  # and more flushes fail meanwhile
        assert (log.written, log.buffered(), log.dropped, log.write_errors) == (5, 150, 50, 0)
        server = start_seaweedfs(tmp_path / "s3", port, access, secret, log_file=tmp_path / "weed.log")
        wait_for_s3(client, "logs")
        _wait(lambda: log.written == 155, timeout=120)
        assert log.buffered() == 0 and not log.sink_failing and log.write_errors == 0
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="logs", Prefix="inference/")["Contents"]]
        ids = []
        for key in keys:
            body = client.get_object(Bucket="logs", Key=key)["Body"].read()
            ids += pq.read_table(io.BytesIO(body)).column("request_id").to_pylist()
        assert sorted(ids, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(155)]  # the 50 dropped were counted
    finally:
        if log is not None:
            log.close()
        stop(server)


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
