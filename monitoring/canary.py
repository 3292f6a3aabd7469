"""Canary analysis: compare the live canary with stable on the inference log, then wait, ramp,
promote or roll back. Run by the `canary_analysis` DAG (pipeline env, like the TFX tasks).

  python -m monitoring.canary analyze      one decision, logged with its numbers
  python -m monitoring.canary status       the current canary, its step and the last decisions

With feedback labels (POST /v1/feedback) it tests accuracy (one-sided two-proportion z-test:
is the canary worse than stable?). Without labels it watches what needs none: mean confidence,
p95 latency, the predicted-class mix (how far the canary's answers drift from stable's) and the
error rate from the gateway's Prometheus counters. A step lasts at least the bake time and until
both sides have enough requests; then the canary share ramps (10 % -> 50 % -> 100 % by default),
and after the last step the canary is promoted (`stable` moves). Any failed check rolls it back.
Decisions append to <home>/serving/canary_decisions.jsonl; the state is <home>/serving/canary_state.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from moodloop.contracts import EMOTIONS, LOG_FEEDBACK, LOG_PREDICTIONS, METRIC_REQUESTS
from moodloop.files import atomic_write_text
from moodloop.log_records import read_log
from moodloop.rollout import CANARY, STABLE, Rollout
from moodloop.settings import CanarySettings, Settings

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
    return stats


def worse_p_value(stable_accuracy: float, stable_n: int, canary_accuracy: float, canary_n: int) -> float:
    """One-sided two-proportion z-test of "the canary is less accurate than stable"."""
    pooled = (stable_accuracy * stable_n + canary_accuracy * canary_n) / (stable_n + canary_n)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / stable_n + 1 / canary_n))
    z = (stable_accuracy - canary_accuracy) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


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


def judge(stable: dict, canary: dict, errors: dict | None, policy: CanarySettings) -> tuple[str, list[str]]:
    """ "rollback" with reasons, "wait" (not enough evidence yet) or "pass" for this step."""
    if stable.get("requests", 0) < policy.min_requests or canary.get("requests", 0) < policy.min_requests:
        return "wait", [
            f"{canary.get('requests', 0)} canary / {stable.get('requests', 0)} stable predictions in this step; "
            f"judging needs {policy.min_requests} each"
        ]
    problems = []
    if canary.get("labelled", 0) >= policy.min_labels and stable.get("labelled", 0) >= policy.min_labels:
        p_value = worse_p_value(stable["accuracy"], stable["labelled"], canary["accuracy"], canary["labelled"])
        drop = stable["accuracy"] - canary["accuracy"]
        if drop > policy.max_accuracy_drop and p_value < policy.alpha:
            problems.append(
                f"canary accuracy {canary['accuracy']:.3f} vs stable {stable['accuracy']:.3f} on feedback labels "
                f"(drop {drop:.3f} > {policy.max_accuracy_drop}, one-sided p = {p_value:.3g})"
            )
    confidence_drop = stable["mean_confidence"] - canary["mean_confidence"]
    if confidence_drop > policy.max_confidence_drop:
        problems.append(
            f"canary mean confidence {canary['mean_confidence']:.3f} vs stable {stable['mean_confidence']:.3f}"
        )
    slower = canary["latency_p95_ms"] - stable["latency_p95_ms"]
    if canary["latency_p95_ms"] > policy.max_latency_ratio * stable["latency_p95_ms"] and (
        slower > policy.min_latency_increase_ms
    ):
        problems.append(
            f"canary p95 latency {canary['latency_p95_ms']:.1f} ms vs stable {stable['latency_p95_ms']:.1f} ms"
        )
    shift = 0.5 * sum(abs(canary["class_mix"][e] - stable["class_mix"][e]) for e in EMOTIONS)
    if shift > policy.max_class_shift:
        problems.append(f"canary's predicted-class mix differs from stable's by {shift:.2f} (total variation)")
    if errors:
        rates = {side: e["errors"] / max(1.0, e["errors"] + e["ok"]) for side, e in errors.items()}
        increase = rates.get(CANARY, 0.0) - rates.get(STABLE, 0.0)
        if increase > policy.max_error_rate_increase:
            problems.append(f"canary error rate {rates[CANARY]:.3f} vs stable {rates.get('stable', 0):.3f}")
    return ("rollback", problems) if problems else ("pass", [])


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
    errors = _error_delta(gateway_error_counts(metrics_url, settings.model_name), state.get("errors_at_start"))
    verdict, reasons = judge(stable, canary, errors, policy)
    baked = now - since
    decision.update(
        canary_version=canary_version,
        stable_version=labels[STABLE],
        step=step,
        share=rollout.share(),
        baked_seconds=round(baked, 1),
        stable=stable,
        canary=canary,
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
        decision.update(action="wait", reasons=reasons)
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
        decision.update(action="ramp", share=share, reasons=[f"step {step + 1} passed: canary share -> {share:.0%}"])
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
    return decision


def describe(decision: dict) -> str:
    lines = [f"canary analysis: {decision['action'].upper()}"]
    if "canary_version" in decision:
        lines.append(
            f"  canary v{decision['canary_version']} vs stable v{decision['stable_version']}, step "
            f"{decision['step'] + 1}, share {decision['share']:.0%}, baked {decision['baked_seconds']:.0f} s"
        )
        for side in ("stable", "canary"):
            s = decision[side]
            if s.get("requests"):
                accuracy = f", accuracy {s['accuracy']:.3f} on {s['labelled']} labels" if "accuracy" in s else ""
                lines.append(
                    f"  {side:<6} {s['requests']} predictions, mean confidence {s['mean_confidence']:.3f}, "
                    f"p95 {s['latency_p95_ms']:.1f} ms{accuracy}"
                )
    lines += [f"  - {r}" for r in decision.get("reasons", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["analyze", "status"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "analyze":
        print(describe(analyze(settings, settings.canary)), flush=True)
        return 0
    state_path, log_path = _paths(settings)
    print(f"state: {state_path.read_text() if state_path.exists() else 'no canary under analysis'}")
    for line in (log_path.read_text().splitlines() if log_path.exists() else [])[-5:]:
        print(describe(json.loads(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
