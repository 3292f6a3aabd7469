"""The canary online: live traffic through the gateway, feedback labels, and the analysis that
waits, ramps 10 % -> 50 % -> 100 %, then promotes a good canary or rolls a bad one back, while
every request is served."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from monitoring.canary import analyze, describe
from moodloop import models_config
from moodloop.contracts import EMOTIONS
from moodloop.log_records import read_log
from moodloop.rollout import Rollout
from moodloop.settings import CanarySettings, Settings

FAST = CanarySettings(steps=(0.1, 0.5, 1.0), bake_seconds=0, min_requests=30, min_labels=20, max_class_shift=1.01)


@pytest.fixture
def canary_home(gateway_settings, labels):
    labels(stable=1, canary=2)
    for leftover in ("canary_state.json", "canary_decisions.jsonl"):
        (gateway_settings.serving_config.parent / leftover).unlink(missing_ok=True)
    yield gateway_settings
    (gateway_settings.serving_config.parent / "canary_state.json").unlink(missing_ok=True)


def send_traffic(http, settings, n: int, accuracy: dict[str, float], seed: int) -> dict[str, int]:
    """n unpinned requests from n clients; feedback labels make each side right with the given rate."""
    rng = np.random.default_rng(seed)
    ids = set()
    for _ in range(n):
        pixels = rng.integers(0, 255, (1, 48, 48)).tolist()
        body = {"signature_name": "serving_pixels", "inputs": {"pixels": pixels}}
        response = http.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": uuid.uuid4().hex})
        assert response.status_code == 200
        ids.add(response.headers["x-request-id"])
    rows = wait_for_rows(settings, ids)
    sides = {"stable": 0, "canary": 0}
    for row in rows:
        sides[row["model_label"]] += 1
        right = rng.random() < accuracy[row["model_label"]]
        truth = row["predicted_class"] if right else EMOTIONS[(EMOTIONS.index(row["predicted_class"]) + 1) % 7]
        assert http.post("/v1/feedback", json={"request_id": row["request_id"], "label": truth}).status_code == 202
    time.sleep(1.5)  # the feedback flush
    return sides


def wait_for_rows(settings, ids: set[str]) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = [r for r in read_log(settings.inference_log_url).to_pylist() if r["request_id"] in ids]
        if len(rows) == len(ids):
            return rows
        time.sleep(0.3)
    raise AssertionError("requests missing from the inference log")


def test_a_good_canary_is_ramped_then_promoted(running, canary_home):
    http = httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30)
    metrics = f"http://127.0.0.1:{running.rest_port}/metrics"
    decision = analyze(canary_home, FAST, metrics_url=metrics)  # a new canary: step 1 starts now, 10 %
    assert decision["action"] == "wait" and running.dataplane.traffic.share() == pytest.approx(0.1)
    shares = []
    for step in range(3):
        sides = send_traffic(http, canary_home, (500, 200, 100)[step], {"stable": 0.6, "canary": 0.9}, seed=step)
        decision = analyze(canary_home, FAST, metrics_url=metrics)
        print(describe(decision))
        shares.append(sides["canary"] / sum(sides.values()))
        assert decision["action"] == ("promote" if step == 2 else "ramp"), decision["reasons"]
    assert shares[0] < 0.2 and 0.35 < shares[1] < 0.65 and shares[2] == 1.0  # the split followed the ramp
    policy = models_config.policies(models_config.read(canary_home.serving_config))["emotion"]
    assert policy.labels == {"stable": 2}
    logged = (canary_home.serving_config.parent / "canary_decisions.jsonl").read_text().splitlines()
    assert len(logged) == 4 and '"action": "promote"' in logged[-1]


def test_a_worse_canary_is_rolled_back_before_full_traffic_and_every_request_is_served(running, canary_home):
    http = httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30)
    metrics = f"http://127.0.0.1:{running.rest_port}/metrics"
    assert analyze(canary_home, FAST, metrics_url=metrics)["action"] == "wait"
    sides = send_traffic(http, canary_home, 40, {"stable": 0.8, "canary": 0.3}, seed=10)
    assert sides["canary"] < FAST.min_requests
    waiting = analyze(canary_home, FAST, metrics_url=metrics)
    assert waiting["action"] == "wait" and "judging needs 30 each" in waiting["reasons"][0]

    failures, stop = [], threading.Event()

    def background():
        with httpx.Client(base_url=str(http.base_url), timeout=30) as client:
            while not stop.is_set():
                body = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((1, 48, 48), int).tolist()}}
                response = client.post(
                    "/v1/models/emotion:predict", json=body, headers={"x-client-id": uuid.uuid4().hex}
                )
                if response.status_code != 200:
                    failures.append(response.text)

    worker = threading.Thread(target=background)
    worker.start()
    try:
        send_traffic(http, canary_home, 400, {"stable": 0.8, "canary": 0.3}, seed=11)
        decision = analyze(canary_home, FAST, metrics_url=metrics)
        time.sleep(1.5)  # the gateway re-reads models.config while requests keep flowing
    finally:
        stop.set()
        worker.join()
    print(describe(decision))
    assert decision["action"] == "rollback" and decision["share"] < 1.0
    assert "feedback labels" in decision["reasons"][0]
    assert models_config.policies(models_config.read(canary_home.serving_config))["emotion"].labels == {"stable": 1}
    assert failures == []
    assert analyze(canary_home, FAST, metrics_url=metrics)["action"] == "none"


def test_without_labels_a_canary_that_answers_differently_is_rolled_back(running, canary_home):
    http = httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30)
    strict = CanarySettings(steps=(0.5, 1.0), bake_seconds=0, min_requests=30, min_labels=10_000, max_class_shift=0.25)
    metrics = f"http://127.0.0.1:{running.rest_port}/metrics"
    assert analyze(canary_home, strict, metrics_url=metrics)["action"] == "wait"
    rng = np.random.default_rng(3)
    ids = set()
    for _ in range(200):
        body = {"signature_name": "serving_pixels", "inputs": {"pixels": rng.integers(0, 255, (1, 48, 48)).tolist()}}
        ids.add(
            http.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": uuid.uuid4().hex}).headers[
                "x-request-id"
            ]
        )
    rows = wait_for_rows(canary_home, ids)
    mixes = {
        side: {e: sum(r["predicted_class"] == e for r in rows if r["model_label"] == side) for e in EMOTIONS}
        for side in ("stable", "canary")
    }
    decision = analyze(canary_home, strict, metrics_url=metrics)
    print(describe(decision), mixes)
    # The two untrained test models answer with different class mixes: no labels needed to see it.
    shift = 0.5 * sum(abs(decision["canary"]["class_mix"][e] - decision["stable"]["class_mix"][e]) for e in EMOTIONS)
    assert (decision["action"] == "rollback") == (shift > 0.25)
    assert shift > 0.25, f"test models too alike to exercise the check: {mixes}"


def test_a_rollback_posts_the_versions_and_why(tmp_path, webhook):
    url, received = webhook
    settings = Settings.from_env(home=tmp_path / "home", alerts={"webhook_url": url})
    base = settings.model_base
    for version in (1, 2):
        (base / str(version)).mkdir(parents=True)
    models_config.ensure(settings.serving_config, settings.model_name, base)
    models_config.set_label(settings.serving_config, settings.model_name, "stable", 1)
    models_config.set_label(settings.serving_config, settings.model_name, "canary", 2)
    assert Rollout.from_settings(settings).rollback(reasons=["accuracy fell 0.81 -> 0.64 (p = 0.003)"]) == 2
    (message,) = received
    assert message["moodloop"]["event"] == "rollback" and "canary v2 rolled back" in message["text"]
    assert message["moodloop"]["numbers"] == {
        "canary dropped": 2,
        "stable": 1,
        "why": "accuracy fell 0.81 -> 0.64 (p = 0.003)",
    }
    assert Rollout.from_settings(settings).rollback() is None and len(received) == 1  # nothing to roll back
