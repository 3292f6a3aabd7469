"""Canary analysis: compare the live canary with stable on the inference log, then wait, ramp,
promote or roll back. Run by the `canary_analysis` DAG (pipeline env, like the TFX tasks).

  python -m monitoring.canary analyze      one decision, logged with its numbers
  python -m monitoring.canary status       the current canary, its step and the last decisions

Evidence in order of strength:
- Serving health, always: the error rate (the gateway's Prometheus counters) and p95 latency.
- Feedback labels (POST /v1/feedback), once both sides have `min_labels`: the labels decide. The
  canary rolls back when its accuracy is worse than stable's (one-sided two-proportion z-test) or
  when one emotion collapses: its F1 (recall and precision: see class_f1_drops) falls by more than
  `max_class_f1_drop`, significantly by a bootstrap within the class (Bonferroni over the classes
  tested). The label-free checks below are still measured and logged, but only inform: after a
  shift the broken champion's answers are the wrong yardstick, and hundreds of labels outweigh it.
- Without enough labels, the label-free checks decide: each side's accuracy estimated without
  labels (moodloop/core/accuracy_estimate.py, by the estimator each version carries: the canary
  rolls back when its estimate is worse than stable's beyond both intervals), mean confidence
  against stable's, and the predicted-class mix against the mix the canary's own reference
  profile expects (what it predicted on its held-out faces; stable's live mix only for a version
  without a profile).
A step lasts at least the bake time and until both sides have enough requests; then the canary
share ramps (10 % -> 50 % -> 100 % by default), and after the last step the canary is promoted
(`stable` moves). Each decision names the evidence that decided and the numbers of both sides:
<home>/serving/canary_decisions.jsonl, the task log, the faces page's model panel (status
contract: `canary`), `make status`. The state is <home>/serving/canary_state.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from moodloop.core import accuracy_estimate, status
from moodloop.core.contracts import (
    ACCURACY_ESTIMATOR,
    EMOTIONS,
    LOG_FEEDBACK,
    LOG_PREDICTIONS,
    METRIC_REQUESTS,
    REFERENCE_PROFILE,
)
from moodloop.core.files import atomic_write_text
from moodloop.core.log_records import read_log
from moodloop.core.rollout import CANARY, STABLE, Rollout
from moodloop.core.settings import CanarySettings, Settings

# Resamples of the per-class F1 bootstrap; not a setting (MOODLOOP_CANARY_BOOTSTRAP was retired:
# no one needs to tune it).
BOOTSTRAP_RESAMPLES = 1000

# ---------------------------------------------------------------- evidence


def load_log(log_url: str, since: float) -> tuple[list[dict], dict[tuple[str, int], str]]:
    """Predictions since `since` and every feedback label, keyed by (request id, instance)."""
    predictions = read_log(log_url, LOG_PREDICTIONS, since).to_pylist()
    feedback = {(r["request_id"], r["instance"]): r["label"] for r in read_log(log_url, LOG_FEEDBACK).to_pylist()}
    return predictions, feedback


def side_stats(rows: list[dict], feedback: dict) -> dict:
    """What one side (stable or canary) did in the window."""
    n = len(rows)
    if n == 0:
        return {"requests": 0}
    latencies = sorted(r["latency_ms"] for r in rows)
    mix = [sum(r["predicted_class"] == e for r in rows) / n for e in EMOTIONS]
    labelled = [
        (r["predicted_class"], feedback[(r["request_id"], r["instance"])])
        for r in rows
        if (r["request_id"], r["instance"]) in feedback
    ]
    stats = {
        "requests": n,
        "versions": sorted({r["model_version"] for r in rows}),
        "mean_confidence": sum(r["confidence"] for r in rows) / n,
        "latency_p95_ms": latencies[min(n - 1, int(0.95 * n))],
        "class_mix": dict(zip(EMOTIONS, mix, strict=True)),
        "labelled": len(labelled),
    }
    if labelled:
        stats["accuracy"] = sum(p == t for p, t in labelled) / len(labelled)
        # Per true emotion: how many labelled faces, how many the side called right (its recall).
        stats["class_labelled"] = {e: sum(t == e for _, t in labelled) for e in EMOTIONS}
        stats["class_right"] = {e: sum(p == t == e for p, t in labelled) for e in EMOTIONS}
        # [true emotion][predicted emotion] counts: what the per-class test resamples
        confusion = [[0] * len(EMOTIONS) for _ in EMOTIONS]
        for predicted, truth in labelled:
            if predicted in EMOTIONS and truth in EMOTIONS:
                confusion[EMOTIONS.index(truth)][EMOTIONS.index(predicted)] += 1
        stats["confusion"] = confusion
    return stats


def reference_class_mix(version_dir: Path) -> dict[str, float] | None:
    """The predicted-class mix a version showed on its own held-out faces (its reference profile,
    the model contract's REFERENCE_PROFILE); None for a version without one (adopted by hand, old)."""
    import pyarrow.parquet as pq

    path = version_dir / REFERENCE_PROFILE
    try:
        predicted = pq.read_table(path, columns=["predicted_class"]).column("predicted_class").to_pylist()
    except (OSError, ValueError, KeyError):
        return None
    if not predicted:
        return None
    return {e: predicted.count(e) / len(predicted) for e in EMOTIONS}


def worse_p_value(stable_accuracy: float, stable_n: int, canary_accuracy: float, canary_n: int) -> float:
    """One-sided two-proportion z-test of "the canary is less accurate than stable"."""
    pooled = (stable_accuracy * stable_n + canary_accuracy * canary_n) / (stable_n + canary_n)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / stable_n + 1 / canary_n))
    z = (stable_accuracy - canary_accuracy) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def latency_limit_ms(stable_p95_ms: float, policy: CanarySettings) -> float:
    """The canary's p95 may not exceed this: `max_latency_ratio` x stable's and by more than
    `min_latency_increase_ms`."""
    return max(policy.max_latency_ratio * stable_p95_ms, stable_p95_ms + policy.min_latency_increase_ms)


def slower_than(threshold_ms: float, rows: list[dict]) -> int:
    """How many of a side's requests took longer than `threshold_ms`."""
    return sum(r["latency_ms"] > threshold_ms for r in rows)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (scipy's survival function, as the A/B gate's
    McNemar test and the edge parity test use it)."""
    from scipy.stats import binom

    return 1.0 if k <= 0 else float(binom.sf(k - 1, n, p))


def gateway_error_counts(metrics_url: str, model: str) -> dict[str, dict[str, float]] | None:
    """{label: {"ok": n, "errors": n}} from the gateway's Prometheus counters; None if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC_REQUESTS:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") == model:
                side = counts.setdefault(sample.labels.get("label", ""), {"ok": 0.0, "errors": 0.0})
                side["ok" if sample.labels.get("code") == "OK" else "errors"] += sample.value
    return counts


@dataclasses.dataclass
class Judgement:
    """One step's verdict and what it stood on.

    `verdict`: "rollback", "wait" (not enough evidence yet) or "pass". `evidence`: "labels" (both
    sides have enough feedback labels: they decide) or "heuristics" (they do not: the label-free
    checks decide). `reasons`: the failed checks that decide a rollback, or why it waits.
    `findings`: every check's outcome in numbers, failed or not, deciding or only informing."""

    verdict: str
    evidence: str
    reasons: list[str]
    findings: list[str]


def total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    return 0.5 * sum(abs(a.get(e, 0.0) - b.get(e, 0.0)) for e in EMOTIONS)


def _label_checks(stable: dict, canary: dict, policy: CanarySettings) -> tuple[list[str], list[str]]:
    """Accuracy and per-class F1 on feedback labels -> (failed checks, findings)."""
    failed, findings = [], []
    p_value = worse_p_value(stable["accuracy"], stable["labelled"], canary["accuracy"], canary["labelled"])
    drop = stable["accuracy"] - canary["accuracy"]
    accuracy = (
        f"canary accuracy {canary['accuracy']:.3f} on {canary['labelled']} feedback labels vs stable "
        f"{stable['accuracy']:.3f} on {stable['labelled']} (one-sided p = {p_value:.3g} that it is worse)"
    )
    if drop > policy.max_accuracy_drop and p_value < policy.alpha:
        failed.append(f"{accuracy}: a drop of {drop:.3f} > {policy.max_accuracy_drop}")
    else:
        findings.append(accuracy)
    tested = [
        e for e in EMOTIONS if min(stable["class_labelled"][e], canary["class_labelled"][e]) >= policy.min_class_labels
    ]
    drops = class_f1_drops(stable["confusion"], canary["confusion"], tested, BOOTSTRAP_RESAMPLES)
    for emotion, (f1_stable, f1_canary, p_value) in drops.items():
        # Bonferroni: seven classes each tested at alpha would roll back a good canary too often.
        if f1_stable - f1_canary > policy.max_class_f1_drop and p_value < policy.alpha / len(tested):
            failed.append(
                f"{emotion} collapsed: F1 {f1_stable:.3f} -> {f1_canary:.3f} on {stable['class_labelled'][emotion]} / "
                f"{canary['class_labelled'][emotion]} labelled faces (recall {_recall(stable, emotion):.3f} -> "
                f"{_recall(canary, emotion):.3f}): a drop of {f1_stable - f1_canary:.3f} > {policy.max_class_f1_drop}, "
                f"bootstrap p = {p_value:.3g} < {policy.alpha:g}/{len(tested)}"
            )
    findings.append(f"per-class F1 tested on {len(tested)} emotion(s) with >= {policy.min_class_labels} labels a side")
    return failed, findings


def _recall(side: dict, emotion: str) -> float:
    return side["class_right"][emotion] / max(1, side["class_labelled"][emotion])


def _f1(confusion: np.ndarray, k: int) -> np.ndarray:
    """F1 of class k from confusion matrices [..., truth, predicted]."""
    right = confusion[..., k, k]
    return 2 * right / np.maximum(1, confusion[..., k, :].sum(axis=-1) + confusion[..., :, k].sum(axis=-1))


def class_f1_drops(
    stable_confusion: list[list[int]],
    canary_confusion: list[list[int]],
    emotions: list[str],
    resamples: int,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Per emotion: stable's F1, the canary's, and the bootstrap p-value of "the canary's is not lower".
    The confusion matrices count [true emotion][predicted emotion] over each side's labelled faces.

    F1, not recall alone: a champion broken by a shift that calls a quarter of all faces "disgust"
    has a disgust recall of 1.0, bought with its precision; judged on recall, a good canary rolled
    back against it (tests/serving/test_canary.py, the drill's decision of issue 26). The two sides
    saw different requests, so each is resampled on its own (an unpaired percentile bootstrap). A
    resample of n labelled faces is a multinomial draw over the 7 x 7 confusion matrix's cells:
    the same bootstrap as drawing faces, in memory that does not grow with the number of labels."""
    rng = np.random.default_rng(seed)
    index = {e: i for i, e in enumerate(EMOTIONS)}

    def resampled(matrix: np.ndarray) -> np.ndarray:
        n = int(matrix.sum())
        draws = rng.multinomial(n, matrix.ravel() / max(1, n), size=resamples)
        return draws.reshape(resamples, len(EMOTIONS), len(EMOTIONS))

    stable, canary = np.asarray(stable_confusion, np.int64), np.asarray(canary_confusion, np.int64)
    stable_b, canary_b = resampled(stable), resampled(canary)
    drops = {}
    for emotion in emotions:
        k = index[emotion]
        worse = _f1(stable_b, k) - _f1(canary_b, k)
        p_value = float((worse <= 0).mean())  # the share of resamples in which the canary is not worse
        drops[emotion] = (float(_f1(stable, k)), float(_f1(canary, k)), p_value)
    return drops


def _label_free_checks(
    stable: dict, canary: dict, policy: CanarySettings, reference_mix: dict[str, float] | None
) -> tuple[list[str], list[str]]:
    """The estimated accuracies, mean confidence and the predicted-class mix -> (failed checks, findings)."""
    failed, findings = [], []
    estimated = _estimate_check(stable, canary)
    if estimated:
        (failed if estimated[0] else findings).append(estimated[1])
    drop = stable["mean_confidence"] - canary["mean_confidence"]
    confidence = f"canary mean confidence {canary['mean_confidence']:.3f} vs stable {stable['mean_confidence']:.3f}"
    (failed if drop > policy.max_confidence_drop else findings).append(
        confidence
        + (f": a drop of {drop:.3f} > {policy.max_confidence_drop}" if drop > policy.max_confidence_drop else "")
    )
    # The mix the canary should show: its own, on its held-out faces. Stable's live mix is the
    # fallback only: after a shift the champion it is compared with is the model that broke.
    expected, against = (
        (reference_mix, "the mix its reference profile expects (its held-out faces)")
        if reference_mix
        else (stable["class_mix"], "stable's live mix (the canary has no reference profile)")
    )
    shift = total_variation(canary["class_mix"], expected)
    mix = f"canary's predicted-class mix differs from {against} by {shift:.2f} (total variation)"
    (failed if shift > policy.max_class_shift else findings).append(
        mix + (f" > {policy.max_class_shift}" if shift > policy.max_class_shift else "")
    )
    if reference_mix:
        findings.append(
            f"... and from stable's live mix by {total_variation(canary['class_mix'], stable['class_mix']):.2f}"
        )
    return failed, findings


def _estimate_check(stable: dict, canary: dict) -> tuple[bool, str] | None:
    """Canary vs stable by their accuracies estimated without labels, by the best method both
    sides have (LEARNED, else ATC, else CBPE) -> (worse beyond both intervals?, the finding)."""
    mine, theirs = canary.get("accuracy_estimate"), stable.get("accuracy_estimate")
    if not mine or not theirs:
        return None
    order = (accuracy_estimate.LEARNED, accuracy_estimate.ATC, accuracy_estimate.CBPE)
    method = next(m for m in order if m in mine and m in theirs)
    c, s = (accuracy_estimate.AccuracyEstimate(**side[method]) for side in (mine, theirs))
    worse = accuracy_estimate.worse_beyond_interval(c, s)
    finding = f"estimated accuracy (no labels, {method.upper()}): canary {c}, stable {s}"
    return worse, finding + (": the canary is worse beyond both intervals" if worse else "")


def estimate_side(settings: Settings, version: int, rows: list[dict]) -> dict | None:
    """One side's accuracy estimated without labels, by the estimator its version carries."""
    if not rows:
        return None
    estimator = accuracy_estimate.load(settings.model_base / str(version) / ACCURACY_ESTIMATOR)
    columns = {key: [r.get(key) for r in rows] for key in rows[0]}
    try:
        return accuracy_estimate.estimate_frame(columns, estimator)
    except (TypeError, ValueError):  # rows without probabilities (an old log): no estimate, the rest decides
        return None


def _health_checks(
    stable: dict, canary: dict, errors: dict | None, policy: CanarySettings
) -> tuple[list[str], list[str]]:
    """p95 latency and the error rate: they decide whatever the labels say -> (failed, findings).
    Latency decides only between concurrent requests (`stable["concurrent"]`, analyze() sets it).

    The latency rule (canary p95 above `latency_limit_ms`: twice stable's and 20 ms more) must hold
    beyond chance, not only in the p95 seen: in a window of 50 canary requests the p95 is the third
    slowest, and three requests caught by a GC pause on a busy machine made it 39.2 ms against
    stable's 18.7 ms in the suite, for a canary as fast as stable. A p95 above the limit means
    more than 5 % of requests are; the check counts the canary's requests above the limit
    (`over_latency_limit`, analyze() adds it) and asks how likely that count is if only 5 % were
    (one-sided binomial test at `alpha`). Three paused requests of 50 are what chance gives; a
    canary 2.5x slower across the board had 9 of 50 over the limit (p = 0.0008)."""
    failed, findings = [], []
    latency = f"canary p95 latency {canary['latency_p95_ms']:.1f} ms vs stable {stable['latency_p95_ms']:.1f} ms"
    limit = latency_limit_ms(stable["latency_p95_ms"], policy)
    over = canary.get("over_latency_limit")
    p_value = 0.0  # without the count (a hand-made stats dict) the p95 seen decides alone
    if over is not None:
        p_value = binomial_upper_tail(over, canary["requests"], 0.05)
        latency += (
            f"; {over} of {canary['requests']} canary requests over the limit {limit:.1f} ms "
            f"(one-sided p = {p_value:.3g} that more than 5 % are)"
        )
    too_slow = canary["latency_p95_ms"] > limit and p_value < policy.alpha
    if stable.get("concurrent") is False and too_slow:
        # At a 100 % step stable's requests are the step before's: another time, another load on
        # the machine (a suite's training beside it made a good canary's p95 60 ms against 7.5).
        # Latency is compared only on concurrent requests, which the steps before did.
        findings.append(f"{latency} (informs only: stable's requests are the step before's, not concurrent)")
    else:
        (failed if too_slow else findings).append(latency)
    if errors:
        rates = {side: e["errors"] / max(1.0, e["errors"] + e["ok"]) for side, e in errors.items()}
        increase = rates.get(CANARY, 0.0) - rates.get(STABLE, 0.0)
        error_rate = f"canary error rate {rates.get(CANARY, 0.0):.3f} vs stable {rates.get(STABLE, 0.0):.3f}"
        (failed if increase > policy.max_error_rate_increase else findings).append(error_rate)
    return failed, findings


def judge(
    stable: dict,
    canary: dict,
    errors: dict | None,
    policy: CanarySettings,
    reference_mix: dict[str, float] | None = None,
) -> Judgement:
    """This step's verdict. Labels (when both sides have enough) outrank the label-free checks,
    which then only inform; serving health (errors, latency) always decides."""
    if stable.get("requests", 0) < policy.min_requests or canary.get("requests", 0) < policy.min_requests:
        waiting = (
            f"{canary.get('requests', 0)} canary / {stable.get('requests', 0)} stable predictions in this step; "
            f"judging needs {policy.min_requests} each"
        )
        return Judgement("wait", "none", [waiting], [])
    labelled = min(canary.get("labelled", 0), stable.get("labelled", 0)) >= policy.min_labels
    failed, findings = _health_checks(stable, canary, errors, policy)
    heuristic_failed, heuristic_findings = _label_free_checks(stable, canary, policy, reference_mix)
    if labelled:
        label_failed, label_findings = _label_checks(stable, canary, policy)
        failed += label_failed
        findings = label_findings + findings
        # Informing only: a failed heuristic is kept in the record, marked as outvoted.
        findings += [f"{f} (informs only: the labels decide)" for f in heuristic_failed] + heuristic_findings
    else:
        failed += heuristic_failed
        findings = (
            [
                f"{min(canary.get('labelled', 0), stable.get('labelled', 0))} feedback labels on the thinner side, "
                f"fewer than {policy.min_labels}: the label-free checks decide"
            ]
            + findings
            + heuristic_findings
        )
    evidence = "labels" if labelled else "heuristics"
    return Judgement("rollback" if failed else "pass", evidence, failed, findings)


# ---------------------------------------------------------------- decisions


def _paths(settings: Settings) -> tuple[Path, Path]:
    folder = settings.serving_config.parent
    return folder / "canary_state.json", folder / "canary_decisions.jsonl"


def _write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=1))


def _error_delta(now: dict | None, before: dict | None) -> dict | None:
    if now is None:
        return None
    before = before or {}
    return {side: {k: v - before.get(side, {}).get(k, 0.0) for k, v in counts.items()} for side, counts in now.items()}


def analyze(
    settings: Settings, policy: CanarySettings, now: float | None = None, metrics_url: str | None = None
) -> dict:
    """Look at the current canary once and act: wait, ramp, promote or roll back. Returns the decision."""
    now = time.time() if now is None else now
    state_path, log_path = _paths(settings)
    metrics_url = metrics_url or f"{settings.gateway_url}/metrics"
    rollout = Rollout.from_settings(settings)
    labels = rollout.labels()
    decision: dict = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(), "labels": labels}
    canary_version = labels.get(CANARY)
    if canary_version is None or STABLE not in labels:
        state_path.unlink(missing_ok=True)
        decision.update(action="none", reasons=["no canary is deployed"])
        return decision

    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("version") != canary_version:  # a new canary: its first step starts now
        state = {"version": canary_version, "step": 0, "since": now, "stable_since": now, "errors_at_start": None}
        rollout.set_share(policy.steps[0])
        state["errors_at_start"] = gateway_error_counts(metrics_url, settings.model_name)
        _write_json(state_path, state)
    # At a 100 % step stable gets no unpinned traffic: it is judged on the previous step's requests.
    step, since, stable_since = state["step"], state["since"], state.get("stable_since", state["since"])
    rows, feedback = load_log(settings.inference_log_url, min(since, stable_since))
    by_side = {
        side: [
            r
            for r in rows
            if r["model_label"] == side
            and r["model_version"] == labels[side]
            and r["timestamp"].timestamp() >= (stable_since if side == STABLE else since)
        ]
        for side in (STABLE, CANARY)
    }
    stable, canary = (side_stats(by_side[s], feedback) for s in (STABLE, CANARY))
    stable["concurrent"] = stable_since >= since  # else a 100 % step: stable is the step before's
    for side, stats in ((STABLE, stable), (CANARY, canary)):
        found = estimate_side(settings, labels[side], by_side[side])
        if found:
            stats["accuracy_estimate"] = found
    if stable["requests"] and canary["requests"]:
        limit = latency_limit_ms(stable["latency_p95_ms"], policy)
        canary["over_latency_limit"] = slower_than(limit, by_side[CANARY])
    errors = _error_delta(gateway_error_counts(metrics_url, settings.model_name), state.get("errors_at_start"))
    reference_mix = reference_class_mix(settings.model_base / str(canary_version))
    judgement = judge(stable, canary, errors, policy, reference_mix)
    verdict, reasons = judgement.verdict, judgement.reasons
    baked = now - since
    decision.update(
        canary_version=canary_version,
        stable_version=labels[STABLE],
        step=step,
        share=rollout.share(),
        baked_seconds=round(baked, 1),
        evidence=judgement.evidence,
        findings=judgement.findings,
        stable=stable,
        canary=canary,
        reference_class_mix=reference_mix,
        errors=errors,
    )
    if verdict == "rollback":
        try:
            rollout.rollback(expected_canary=canary_version, reasons=reasons)
        except LookupError as error:  # a new canary arrived during the analysis: judge it next time
            decision.update(action="none", reasons=[str(error)])
            return decision
        state_path.unlink(missing_ok=True)
        decision.update(action="rollback", reasons=reasons)
    elif verdict == "wait" or baked < policy.bake_seconds:
        reasons = reasons or [f"baking: {baked:.0f} s of {policy.bake_seconds:.0f} s in step {step + 1}"]
        decision.update(
            action="wait", reasons=reasons, bake_left_seconds=round(max(0.0, policy.bake_seconds - baked), 1)
        )
    elif step + 1 < len(policy.steps):
        share = policy.steps[step + 1]
        rollout.set_share(share)
        state.update(
            step=step + 1,
            since=now,
            stable_since=stable_since if share >= 1.0 else now,
            errors_at_start=gateway_error_counts(metrics_url, settings.model_name),
        )
        _write_json(state_path, state)
        decision.update(
            action="ramp",
            share=share,
            bake_left_seconds=policy.bake_seconds,
            reasons=[f"step {step + 1} passed: canary share -> {share:.0%}"],
        )
    else:
        try:
            promoted = rollout.promote(expected_canary=canary_version)
        except LookupError as error:
            decision.update(action="none", reasons=[str(error)])
            return decision
        state_path.unlink(missing_ok=True)
        decision.update(action="promote", reasons=[f"every step passed: stable -> version {promoted}"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as fh:
        fh.write(json.dumps(decision, default=str) + "\n")
    status.write_status(settings.status_dir, status.CANARY, decision)  # the faces page's model panel
    return decision


def describe(decision: dict) -> str:
    lines = [f"canary analysis: {decision['action'].upper()}"]
    if "canary_version" in decision:
        evidence = {"labels": "feedback labels", "heuristics": "label-free checks (too few labels)"}
        lines.append(
            f"  canary v{decision['canary_version']} vs stable v{decision['stable_version']}, step "
            f"{decision['step'] + 1}, share {decision['share']:.0%}, baked {decision['baked_seconds']:.0f} s"
            + (f"; decided on {evidence[decision['evidence']]}" if decision.get("evidence") in evidence else "")
        )
        for side in ("stable", "canary"):
            s = decision[side]
            if s.get("requests"):
                accuracy = f", accuracy {s['accuracy']:.3f} on {s['labelled']} labels" if "accuracy" in s else ""
                if s.get("accuracy_estimate"):
                    found = s["accuracy_estimate"]
                    accuracy += f", estimated {accuracy_estimate.AccuracyEstimate(**found[found['decides']])}"
                lines.append(
                    f"  {side:<6} {s['requests']} predictions, mean confidence {s['mean_confidence']:.3f}, "
                    f"p95 {s['latency_p95_ms']:.1f} ms{accuracy}"
                )
    lines += [f"  - {r}" for r in decision.get("reasons", [])]
    lines += [f"  . {f}" for f in decision.get("findings", [])]
    return "\n".join(lines)


def next_look(decision: dict, policy: CanarySettings) -> float | None:
    """Seconds until this canary's step has baked, when that comes before the next scheduled
    analysis (`every_minutes`); else None. Why: a step should end when its bake ends, not at the
    first scheduled run after it. With the schedule alone each step took up to one period more
    than its bake (the stack's drill: bake 50 s, a run a minute, 60-65 s a step)."""
    left = decision.get("bake_left_seconds")
    if decision.get("action") not in ("wait", "ramp") or not left:
        return None
    return left if left < policy.every_minutes * 60 else None


def analyze_until_scheduled(settings: Settings, policy: CanarySettings, sleep=time.sleep) -> dict:
    """`analyze`, then again whenever a step's bake ends before the next scheduled run (at most a
    period of waiting each time, so a run never outlasts its schedule by much). -> the last decision."""
    decision = analyze(settings, policy)
    print(describe(decision), flush=True)
    while (pause := next_look(decision, policy)) is not None:
        print(f"the step has baked in {pause:.0f} s, before the next scheduled run: looking again then", flush=True)
        sleep(pause + 1.0)  # a second past the bake: the step has surely baked
        decision = analyze(settings, policy)
        print(describe(decision), flush=True)
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["analyze", "status"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "analyze":
        analyze_until_scheduled(settings, settings.canary)
        return 0
    state_path, log_path = _paths(settings)
    print(f"state: {state_path.read_text() if state_path.exists() else 'no canary under analysis'}")
    for line in (log_path.read_text().splitlines() if log_path.exists() else [])[-5:]:
        print(describe(json.loads(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
