"""The canary online: live traffic through the gateway, feedback labels, and the analysis that
waits, ramps 10 % -> 50 % -> 100 %, then promotes a good canary or rolls a bad one back, while
every request is served."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from monitoring.canary import (
    analyze,
    binomial_upper_tail,
    describe,
    judge,
    latency_limit_ms,
    side_stats,
    slower_than,
)
from moodloop.core import models_config
from moodloop.core.contracts import EMOTIONS
from moodloop.core.log_records import read_log
from moodloop.core.rollout import Rollout
from moodloop.core.settings import CanarySettings, Settings
from moodloop.local.stack import canary_summary

# The online tests are about the ramp and the labels; latency is judged with the product's rule
# (it compares concurrent requests only: at the 100 % step stable's are the step before's, and a
# CI run once rolled a good canary back there, p95 60 ms against 7.5 ms, while another test trained).
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
    for i in range(n):
        pixels = rng.integers(0, 255, (1, 48, 48)).tolist()
        body = {"signature_name": "serving_pixels", "inputs": {"pixels": pixels}}
        # client ids of this seed: the same split into stable and canary on every run
        response = http.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": f"client-{seed}-{i}"})
        assert response.status_code == 200
        ids.add(response.headers["x-request-id"])
    rows = wait_for_rows(settings, ids)
    sides = {"stable": 0, "canary": 0}
    for row in rows:
        sides[row["model_label"]] += 1
        right = rng.random() < accuracy[row["model_label"]]
        truth = row["predicted_class"] if right else EMOTIONS[(EMOTIONS.index(row["predicted_class"]) + 1) % 7]
        assert http.post("/v1/feedback", json={"request_id": row["request_id"], "label": truth}).status_code == 202
    deadline = time.monotonic() + 60
    while not ids <= {r["request_id"] for r in read_log(settings.inference_log_url, "feedback").to_pylist()}:
        assert time.monotonic() < deadline, "feedback labels missing from the inference log"
        time.sleep(0.3)  # the feedback flush
    return sides


def wait_for_rows(settings, ids: set[str]) -> list[dict]:
    deadline = time.monotonic() + 60
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
        deadline = time.monotonic() + 10  # the gateway re-reads the traffic share every 0.5 s
        while decision["action"] == "ramp" and running.dataplane.traffic.share() != pytest.approx(decision["share"]):
            assert time.monotonic() < deadline, "the gateway did not take the new traffic share"
            time.sleep(0.1)
        assert decision["action"] == ("promote" if step == 2 else "ramp"), decision["reasons"]
    assert shares[0] < 0.2 and 0.35 < shares[1] < 0.65 and shares[2] == 1.0  # the split followed the ramp
    policy = models_config.policies(models_config.read(canary_home.serving_config))["emotion"]
    assert policy.labels == {"stable": 2}
    logged = (canary_home.serving_config.parent / "canary_decisions.jsonl").read_text().splitlines()
    assert len(logged) == 4 and '"action": "promote"' in logged[-1]
    concurrent = [json.loads(line).get("stable", {}).get("concurrent") for line in logged[1:]]
    assert concurrent == [True, True, False]  # the 100 % step judged stable on the step before's requests


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
    assert "feedback labels" in decision["reasons"][0] and decision["evidence"] == "labels"
    panel = http.get("/v1/panel").json()["canary"]  # the faces page's model panel shows the decision
    assert panel["action"] == "rollback" and panel["evidence"] == "labels" and panel["reasons"] == decision["reasons"]
    assert panel["canary"]["labelled"] == decision["canary"]["labelled"] == sum(map(sum, panel["canary"]["confusion"]))
    line = canary_summary(panel)  # `make status`
    assert line.startswith("latest canary decision: rollback (canary v2 vs stable v1, decided on feedback labels)")
    assert f"canary {decision['canary']['requests']} predictions, {decision['canary']['labelled']} labelled" in line
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
    for i in range(200):  # client ids of their own: the same split on every run
        body = {"signature_name": "serving_pixels", "inputs": {"pixels": rng.integers(0, 255, (1, 48, 48)).tolist()}}
        ids.add(
            http.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": f"unlabelled-{i}"}).headers[
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


# ---------------------------------------------------------------- judge(): evidence in order of strength


def _side(
    name: str,
    truths: list[str],
    predictions: list[str],
    confidence: float = 0.7,
    latency_ms: float | list[float] = 5.0,
    stable: dict | None = None,
):
    """side_stats of one side whose every prediction got a feedback label; for the canary (given
    stable's stats), also its count of requests over the latency limit, as analyze() adds it."""
    latencies = latency_ms if isinstance(latency_ms, list) else [latency_ms] * len(predictions)
    rows = [
        {
            "request_id": f"{name}-{i}",
            "instance": 0,
            "predicted_class": predicted,
            "confidence": confidence,
            "latency_ms": latencies[i],
            "model_version": 1,
        }
        for i, predicted in enumerate(predictions)
    ]
    feedback = {(f"{name}-{i}", 0): truth for i, truth in enumerate(truths)}
    stats = side_stats(rows, feedback)
    if stable is not None:
        stats["over_latency_limit"] = slower_than(latency_limit_ms(stable["latency_p95_ms"], CanarySettings()), rows)
    return stats


def _answers(truths: list[str], right: float, rng: np.random.Generator, wrong_as: str | None = None) -> list[str]:
    """Right with probability `right`, else the next emotion (or `wrong_as`)."""
    return [t if rng.random() < right else (wrong_as or EMOTIONS[(EMOTIONS.index(t) + 1) % 7]) for t in truths]


def test_labels_that_say_the_canary_is_better_outvote_a_class_mix_unlike_the_broken_champions():
    """The drill's decision on a fresh clone (issue 26): after a shift the champion called a quarter
    of the faces "disgust"; the canary was right on 0.80 of 525 labelled faces against stable's 0.57
    of 475, and its class mix differed from stable's by 0.30. The labels decide: it must not roll back."""
    rng = np.random.default_rng(0)
    canary_truths = [EMOTIONS[i % 7] for i in range(525)]
    stable_truths = [EMOTIONS[i % 7] for i in range(475)]
    canary = _side("canary", canary_truths, _answers(canary_truths, 0.80, rng), confidence=0.75)
    # The broken champion: its mistakes are all "disgust" (right on half, and on the disgusted faces).
    stable = _side("stable", stable_truths, _answers(stable_truths, 0.50, rng, wrong_as="disgust"), confidence=0.9)
    shift = 0.5 * sum(abs(canary["class_mix"][e] - stable["class_mix"][e]) for e in EMOTIONS)
    assert shift > CanarySettings().max_class_shift and canary["accuracy"] > 0.75 and stable["accuracy"] < 0.62
    # The trap: calling every doubt "disgust" gives the broken champion a perfect disgust recall.
    assert stable["class_right"]["disgust"] == stable["class_labelled"]["disgust"] > canary["class_right"]["disgust"]
    policy = CanarySettings()  # the product's defaults
    judgement = judge(stable, canary, None, policy)
    assert judgement.verdict == "pass", judgement
    assert judgement.evidence == "labels"
    found = " ".join(judgement.findings)
    assert "predicted-class mix" in found and "informs only" in found  # measured, logged, not deciding
    assert "mean confidence" in found and "informs only" in found
    assert f"canary accuracy {canary['accuracy']:.3f} on 525 feedback labels" in found


def test_with_labels_a_collapsed_class_rolls_back_a_canary_that_is_better_overall():
    rng = np.random.default_rng(1)
    truths = [EMOTIONS[i % 7] for i in range(700)]
    stable = _side("stable", truths, _answers(truths, 0.70, rng))
    canary_answers = _answers(truths, 0.85, rng)
    canary_answers = [
        ("neutral" if t == "fear" and rng.random() < 0.8 else a) for t, a in zip(truths, canary_answers, strict=True)
    ]
    canary = _side("canary", truths, canary_answers)
    assert canary["accuracy"] > stable["accuracy"]
    judgement = judge(stable, canary, None, CanarySettings())
    assert judgement.verdict == "rollback" and judgement.evidence == "labels"
    (reason,) = judgement.reasons
    assert reason.startswith("fear collapsed: F1") and "/7" in reason  # Bonferroni over the 7 tested classes


def test_with_labels_errors_and_latency_still_decide():
    rng = np.random.default_rng(2)
    truths = [EMOTIONS[i % 7] for i in range(300)]
    stable = _side("stable", truths, _answers(truths, 0.6, rng))
    canary = _side("canary", truths, _answers(truths, 0.9, rng), latency_ms=80.0, stable=stable)
    errors = {"stable": {"ok": 300.0, "errors": 0.0}, "canary": {"ok": 270.0, "errors": 30.0}}
    judgement = judge(stable, canary, errors, CanarySettings())
    assert judgement.verdict == "rollback" and judgement.evidence == "labels"
    assert [r.split()[1] for r in judgement.reasons] == ["p95", "error"]


def test_a_few_slow_requests_in_a_small_window_do_not_roll_back_a_canary_as_fast_as_stable():
    """The suite's flake on a busy machine: 450 stable and 50 canary requests from one latency
    distribution, three of the canary's caught by a pause: its p95 (the third slowest of 50) went
    past twice stable's and 20 ms more. Three of 50 over the limit is what chance gives when 5 %
    may be: it must not roll back. A canary whose every request is 2.5x slower must."""
    rng = np.random.default_rng(4)
    truths = [EMOTIONS[i % 7] for i in range(500)]
    latencies = list(rng.gamma(9.0, 1.2, size=500))  # about 11 ms, p95 near 17 ms
    stable = _side("stable", truths[:450], _answers(truths[:450], 0.6, rng), latency_ms=latencies[:450])
    paused = latencies[450:497] + [60.0, 52.0, 48.0]  # the canary's three unlucky requests
    canary = _side("canary", truths[450:], _answers(truths[450:], 0.9, rng), latency_ms=paused, stable=stable)
    policy = CanarySettings(min_requests=30, min_labels=20)
    assert canary["latency_p95_ms"] > latency_limit_ms(stable["latency_p95_ms"], policy)  # the p95 rule alone: rollback
    assert canary["over_latency_limit"] == 3
    judgement = judge(stable, canary, None, policy)
    assert judgement.verdict == "pass", judgement.reasons
    assert any("3 of 50 canary requests over the limit" in f for f in judgement.findings), judgement.findings

    slower = [2.5 * x for x in latencies[450:]]
    slow = _side("canary", truths[450:], _answers(truths[450:], 0.9, rng), latency_ms=slower, stable=stable)
    judgement = judge(stable, slow, None, policy)
    assert judgement.verdict == "rollback" and judgement.reasons[0].startswith("canary p95 latency"), judgement


def test_at_a_full_traffic_step_latency_against_the_step_befores_stable_only_informs():
    """At a 100 % step stable gets no unpinned traffic; its requests are the step before's, under
    another load. A canary 2.5x slower than those is not rolled back on latency there (the steps
    before compared latency on concurrent requests); errors and labels still decide."""
    rng = np.random.default_rng(5)
    truths = [EMOTIONS[i % 7] for i in range(400)]
    stable = _side("stable", truths[:200], _answers(truths[:200], 0.6, rng), latency_ms=8.0)
    slow = _side("canary", truths[200:], _answers(truths[200:], 0.9, rng), latency_ms=60.0, stable=stable)
    policy = CanarySettings(min_requests=30, min_labels=20)
    assert judge(stable, slow, None, policy).verdict == "rollback"  # concurrent: the rule decides
    stable["concurrent"] = False
    judgement = judge(stable, slow, None, policy)
    assert judgement.verdict == "pass", judgement.reasons
    assert any("informs only: stable's requests are the step before's" in f for f in judgement.findings)
    errors = {"stable": {"ok": 200.0, "errors": 0.0}, "canary": {"ok": 180.0, "errors": 20.0}}
    assert judge(stable, slow, errors, policy).reasons[0].startswith("canary error rate")


def test_the_binomial_tail_is_exact():
    assert binomial_upper_tail(0, 50, 0.05) == 1.0
    assert binomial_upper_tail(1, 10, 0.5) == pytest.approx(1 - 0.5**10)
    assert binomial_upper_tail(3, 50, 0.05) == pytest.approx(0.4595, abs=1e-4)  # 1 - P(X <= 2)
    assert binomial_upper_tail(50, 50, 0.05) == pytest.approx(0.05**50)


def test_without_labels_the_class_mix_is_held_to_the_canarys_reference_profile():
    rng = np.random.default_rng(3)
    unlabelled = CanarySettings(min_labels=10_000)
    truths = [EMOTIONS[i % 7] for i in range(400)]
    canary = _side("canary", truths, _answers(truths, 0.8, rng))
    stable = _side("stable", truths, _answers(truths, 0.5, rng, wrong_as="disgust"))
    # What the canary predicted on its own held-out faces: about what it predicts live.
    expected = dict(canary["class_mix"])
    judgement = judge(stable, canary, None, unlabelled, reference_mix=expected)
    assert judgement.verdict == "pass" and judgement.evidence == "heuristics", judgement
    assert "reference profile" in " ".join(judgement.findings)
    # A canary that answers "happy" far more than on its held-out faces rolls back, labels or not.
    skewed = _side("canary", truths, ["happy" if rng.random() < 0.5 else a for a in _answers(truths, 0.8, rng)])
    judgement = judge(stable, skewed, None, unlabelled, reference_mix=expected)
    assert judgement.verdict == "rollback" and "reference profile expects" in judgement.reasons[0]
    # A version without a reference profile: stable's live mix is the only yardstick left.
    judgement = judge(stable, canary, None, unlabelled)
    assert judgement.verdict == "rollback" and "stable's live mix" in judgement.reasons[0]


def test_without_labels_a_canary_estimated_worse_beyond_both_intervals_rolls_back():
    """Issue 31: the accuracy estimated without labels (as analyze() adds it per side) decides when
    labels are missing, and only informs when they are there."""
    rng = np.random.default_rng(5)
    truths = [EMOTIONS[i % 7] for i in range(400)]
    stable = _side("stable", truths, _answers(truths, 0.8, rng))
    canary = _side("canary", truths, _answers(truths, 0.8, rng))
    mix = dict(canary["class_mix"])

    def estimated(accuracy: float, half: float, method: str = "learned") -> dict:
        low, high = accuracy - half, accuracy + half
        numbers = {"method": method, "accuracy": accuracy, "low": low, "high": high, "faces": 400}
        return {method: numbers, "cbpe": numbers | {"method": "cbpe"}, "decides": method}

    stable["accuracy_estimate"] = estimated(0.80, 0.05)
    canary["accuracy_estimate"] = estimated(0.55, 0.05)
    unlabelled = CanarySettings(min_labels=10_000)
    judgement = judge(stable, canary, None, unlabelled, reference_mix=mix)
    assert judgement.verdict == "rollback" and judgement.evidence == "heuristics", judgement
    assert judgement.reasons[0].startswith("estimated accuracy (no labels, LEARNED): canary 55.0%")
    assert "worse beyond both intervals" in judgement.reasons[0]
    # Overlapping intervals: a difference the estimates cannot tell from chance does not roll back.
    canary["accuracy_estimate"] = estimated(0.72, 0.05)
    judgement = judge(stable, canary, None, unlabelled, reference_mix=mix)
    assert judgement.verdict == "pass" and any("estimated accuracy" in f for f in judgement.findings), judgement
    # Versions with different estimators are compared by the best method both carry.
    canary["accuracy_estimate"] = {"cbpe": estimated(0.5, 0.02, "cbpe")["cbpe"], "decides": "cbpe"}
    judgement = judge(stable, canary, None, unlabelled, reference_mix=mix)
    assert judgement.verdict == "rollback" and "CBPE" in judgement.reasons[0]
    # With enough labels the labels decide: the same estimate only informs.
    judgement = judge(stable, canary, None, CanarySettings(min_labels=100), reference_mix=mix)
    assert judgement.evidence == "labels" and judgement.verdict == "pass", judgement
    assert any("estimated accuracy" in f and "informs only" in f for f in judgement.findings)


def test_a_step_ends_when_its_bake_ends_not_at_the_next_scheduled_run(monkeypatch):
    """The schedule runs the analysis every `every_minutes`; a step whose bake ends before the next
    run is judged when it ends (the run waits for it), step after step, until a decision needs no
    look before the next run. A wait for anything but the bake, or a bake longer than the period,
    is left to the schedule."""
    from monitoring import canary

    policy = CanarySettings(bake_seconds=50, every_minutes=1.0)
    decisions = iter(
        [
            {"action": "wait", "step": 0, "bake_left_seconds": 50.0, "reasons": ["0 canary / 0 stable predictions"]},
            {"action": "ramp", "step": 0, "bake_left_seconds": 50.0, "reasons": ["step 1 passed"]},
            {"action": "wait", "step": 1, "bake_left_seconds": 2.5, "reasons": ["baking: 48 s of 50 s in step 2"]},
            {"action": "promote", "step": 1, "reasons": ["every step passed"]},
        ]
    )
    monkeypatch.setattr(canary, "analyze", lambda settings, policy: next(decisions))
    monkeypatch.setattr(canary, "describe", lambda decision: decision["action"])
    slept: list[float] = []
    assert canary.analyze_until_scheduled(None, policy, sleep=slept.append)["action"] == "promote"
    assert slept == [51.0, 51.0, 3.5]  # each a second past the bake's end
    assert canary.next_look({"action": "wait", "bake_left_seconds": 0.0}, policy) is None  # baked: short of requests
    assert canary.next_look({"action": "wait", "bake_left_seconds": 70.0}, policy) is None  # the next run comes first
    assert canary.next_look({"action": "rollback", "bake_left_seconds": 50.0}, policy) is None
