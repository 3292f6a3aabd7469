"""The drift drill: does the loop notice a shift in live traffic and heal the model by itself?

1. Train on clean SYNTHETIC faces; serve the model.
2. Send clean traffic for some windows (with feedback labels); the drift job judges each window.
3. Shift the traffic (dimmer light, blur, smaller faces: the generator's knobs) while a labelled
   batch from the shifted distribution lands; the drift job flags the shift and the retrain starts.
4. The retrained model comes up; the drill measures it on shifted faces.

Two ways to run it:
  --stack   on a local stack of its own (`make drill`): Airflow's scheduler runs monitor_drift
            (every minute here), which triggers train_emotion_model through the REST API (or joins
            the run the landed batch started); the new version is pushed as canary and
            canary_analysis ramps and promotes it. The drill only plays the users and the labellers.
            The stack stays up at the end so the reports can be opened in the browser.
  (default) in process, quicker: the pipeline run stands in for the Airflow DAG run (the drift job
            calls it through the same retrain hook), the gateway runs alone, no canary analysis.

Prints: windows until drift is flagged, false alarms over the clean windows, accuracy on clean
faces before the shift, on shifted faces before the retrain and after it (ratio to the clean
accuracy: the goal is >= 0.95), and the time from the shift to the new model serving.

  .venv/orchestration/bin/python bench/drift_drill.py --stack      # make drill
  .venv/orchestration/bin/python bench/drift_drill.py              # in process, 20 clean windows
  .venv/orchestration/bin/python bench/drift_drill.py --clean-windows 3 --faces 2000   # smaller

Runs in the orchestration env (Evidently, GX, Airflow); training and serving run in the pipeline env.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from data import landing, synthetic
from monitoring import drift
from moodloop.core.contracts import EMOTIONS, LABELLED_BATCH_PREFIX
from moodloop.core.gateway_process import GATEWAY_COMMAND, GatewayProcess, start_process
from moodloop.core.log_records import read_log
from moodloop.core.settings import PROFILES, Settings
from moodloop.local import stack
from moodloop.local.s3server import free_port

REPO = Path(__file__).resolve().parent.parent
AFTER_FACES = 1000  # the retrained model is measured on this many new shifted faces (not fed back)
AFTER_SEED = 3000  # ... drawn with this generator seed (plus --seed's stride)
DEFAULT_LABEL_MODE_FEEDBACK_SHARE = 0.25  # --labels loop|random: users label a quarter of their faces
# "dim": dimmer light (darker, flatter) and blurrier faces; most of the information is still there,
# so a retrain can learn it, but not all: at equal data a model learns dim faces 0.94-0.96 as well
# as clean ones (docs/monitoring.md, "How close dim sits to its own limit"). "harsh": so dark that
# dark features clip to black, so blurred and small that a model trained on 4000 harsh faces alone
# reaches 0.40: no retrain can reach the goal there.
SHIFTS = {
    "dim": synthetic.Shift(brightness=-0.2, contrast=0.6, blur=0.4),
    "harsh": synthetic.Shift(brightness=-0.25, blur=1.0, face_scale=0.8),
}
NO_SHIFT = synthetic.Shift()
LABEL_MODES = ("batch", "loop", "random")
SEED_STRIDE = 100_000  # --seed N: every generator seed the drill uses moves by N x this (they stay apart)
# The drill trains with the product's defaults (issue 31.3): it proves what a user gets. Until
# 2026-12-05 it set its own (15 epochs, no augmentation); the same seeds healed as well or better
# with the defaults once the default learning rate was 0.002 (docs/benchmarks.md).


class Drill:
    def __init__(
        self, home: Path, args: argparse.Namespace, env: dict[str, str] | None = None, training: dict | None = None
    ) -> None:
        self.args = args
        self.mode, self.budget = labels_of(args)
        self.feedback_share = feedback_share_of(args, self.mode)
        # --seed N draws other faces everywhere (batches, traffic, labels) and seeds the training
        self.seed_base = SEED_STRIDE * getattr(args, "seed", 0)
        self.env = env or {
            **os.environ,
            **(training or {}),
            "MOODLOOP_SEED": str(getattr(args, "seed", 0)),
            **label_settings(args),
            "MOODLOOP_HOME": str(home),
            "MOODLOOP_LOG_FLUSH_SECONDS": "1",
            "MOODLOOP_REST_PORT": "0",  # any free port: start_gateway reads the ones it bound
            "MOODLOOP_GRPC_PORT": "0",
        }
        self.settings = Settings.from_env(
            home=home,
            drift={
                "window_records": args.window,
                "label_budget": self.budget,
                "label_queue_faces": self.budget,
                **({"label_strategy": self.mode} if self.mode != "batch" else {}),
            },
            serving={"keep_live_faces": self.env.get("MOODLOOP_KEEP_LIVE_FACES") == "1"},
        )
        self.truth: dict[str, np.ndarray] = {}  # request id -> the true labels of its faces (the labellers' answers)
        self.moodloop = str(self.settings.pipeline_python.with_name("moodloop"))
        self.rest = f"http://127.0.0.1:{self.env['MOODLOOP_REST_PORT']}"
        self.gateway: GatewayProcess | None = None
        self.labels_delayed = 0  # labels the feedback rate limit sent back to wait (429, Retry-After)
        self.feedback_sent = 0  # feedback labels on live faces (not the Label tab's answers)

    def run(self, *command: str) -> str:
        done = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def batch(self, name: str, n: int, seed: int, shift: synthetic.Shift | None) -> Path:
        pixels, labels = synthetic.generate_arrays(n, seed=self.seed_base + seed, shift=shift or synthetic.Shift())
        path = self.settings.home / "drill" / name / "fer2013.csv"
        landing.write_fer2013_csv(zip(pixels, labels, strict=True), path)
        return path

    def start_gateway(self) -> None:
        command = [str(self.settings.pipeline_python), *GATEWAY_COMMAND]
        self.gateway = start_process(self.env, command=command, cwd=REPO)
        self.rest = f"http://127.0.0.1:{self.gateway.rest_port}"
        self.wait_until(lambda: self.call("GET", "/healthz").get("ready"), 120, "the gateway")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.rest + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read()) | {"_request_id": response.headers.get("x-request-id")}
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read()) | {"_status": error.code}
            return answer | {"_retry_after": float(error.headers.get("retry-after") or 0)}

    def send_label(self, body: dict) -> None:
        """One feedback label, as a well-behaved labelling tool sends it: the drill plays every
        labeller from one address, so it meets the gateway's per-client feedback rate; it waits
        Retry-After and resends rather than lose a label (a lost label would bias the drill)."""
        for _ in range(20):
            sent = self.call("POST", "/v1/feedback", body)
            if sent.get("_status") != 429:
                break
            self.labels_delayed += 1
            time.sleep(max(sent["_retry_after"], 0.05))
        if "_status" in sent:
            raise RuntimeError(f"feedback refused ({sent['_status']}): {sent.get('error')}")
        self.feedback_sent += 1

    @staticmethod
    def wait_until(check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := check():
                    return result
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} not ready after {timeout:.0f} s")

    def traffic(
        self, seed: int, shift: synthetic.Shift | None, label: str = "", feedback: bool = True, faces: int = 0
    ) -> float:
        """One window of live requests (25 faces each) with feedback labels on --feedback-share of the
        faces; returns the accuracy."""
        n = faces or self.args.window
        pixels, labels = synthetic.generate_arrays(n, seed=self.seed_base + seed, shift=shift or synthetic.Shift())
        path = f"/v1/models/emotion/labels/{label}:predict" if label else "/v1/models/emotion:predict"
        right, share_draws, window_began = 0, np.random.default_rng(self.seed_base + seed), time.time()
        for start in range(0, len(pixels), 25):
            chunk = slice(start, start + 25)
            answer = self.call(
                "POST", path, {"signature_name": "serving_pixels", "inputs": {"pixels": pixels[chunk].tolist()}}
            )
            predicted = np.array(answer["outputs"]["class_ids"])
            right += int((predicted == labels[chunk]).sum())
            self.truth[answer["_request_id"]] = labels[chunk]
            if feedback:  # users label a share of what they send (--feedback-share)
                for i, truth in enumerate(labels[chunk]):
                    if share_draws.random() < self.feedback_share:
                        self.send_label({"request_id": answer["_request_id"], "instance": i, "label": EMOTIONS[truth]})
        self.wait_for_flush(answer["_request_id"], window_began)
        return right / len(pixels)

    def wait_for_flush(self, request_id: str, since: float, timeout: float = 120) -> None:
        """Until the gateway's inference log holds `request_id` (the window's last request), so the
        drift job judges the whole window; a log in S3 is given a few flush periods instead."""
        log_url = str(self.settings.inference_log_url)
        if log_url.startswith("s3://"):
            time.sleep(2.5)
            return
        deadline = time.monotonic() + timeout

        def logged() -> bool:
            table = read_log(log_url, since=since - 1)
            return table.num_rows > 0 and request_id in set(table.column("request_id").to_pylist())

        while not logged():
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} not in the inference log after {timeout:.0f} s")
            time.sleep(0.3)

    def retrain(self, settings: Settings, conf: dict) -> dict:
        """What the drift job calls: here the pipeline itself instead of the Airflow DAG run."""
        out = self.run(self.moodloop, "train")
        pushed = re.search(r"pushed version (\d+)", out)
        kept = ("A/B gate:", "  judged on", "  candidate accuracy", "  champion accuracy", "  earlier traffic", "  - ")
        lines = [line.strip() for line in out.splitlines() if line.startswith(kept)]
        verdict = list(dict.fromkeys(lines))
        return {"pushed_version": int(pushed[1]) if pushed else None, "gate": verdict, "conf": conf}

    def labels(self) -> dict[str, int]:
        return self.call("GET", "/healthz").get("labels") or {}

    def answer_queue(self, most: int) -> tuple[int, bool]:
        """Play the labellers in the Label tab's API: answer up to `most` faces the queue asks
        about, each with its true emotion (the generator's). -> (answered, a batch completed)."""
        answered = 0
        while answered < most:
            face = self.call("GET", "/v1/labelling/next").get("face")
            if face is None:
                return answered, False
            truth = EMOTIONS[int(self.truth[face["request_id"]][face["instance"]])]
            for _ in range(20):  # the feedback rate applies to labels too: wait Retry-After
                took = self.call("POST", "/v1/labelling/answer", {"face_id": face["face_id"], "answer": truth})
                if took.get("_status") != 429:
                    break
                self.labels_delayed += 1
                time.sleep(max(took["_retry_after"], 0.05))
            if "_status" in took:
                raise RuntimeError(f"the answer was refused ({took['_status']}): {took.get('error')}")
            answered += 1
            if took["batch_complete"]:
                return answered, True
        return answered, False

    def labelled_batch(self, timeout: float = 60) -> Path:
        """The landing batch the answers became (the gateway delivers it in the background)."""

        def landed():
            found = sorted(self.settings.landing_dir.glob(f"{LABELLED_BATCH_PREFIX}*/_SUCCESS"))
            return found[-1].parent if found else None

        return self.wait_until(landed, timeout, "the batch of labelled faces")

    def next_decision(self, seen: int, timeout: float) -> dict:
        """Wait for the drift job's next judged window (line `seen + 1` of drift_decisions.jsonl)."""
        path = self.settings.home / "monitoring" / "drift_decisions.jsonl"

        def judged():
            lines = path.read_text().splitlines() if path.exists() else []
            return json.loads(lines[seen]) if len(lines) > seen else None

        return self.wait_until(judged, timeout, "the drift job's verdict")

    def stop(self) -> None:
        if self.gateway:
            self.gateway.stop(timeout=30)
            # its latest lines, for a look after the drill (the process kept them in memory)
            (self.settings.home / "gateway.log").write_text("".join(self.gateway.lines))


def drill(args: argparse.Namespace, home: Path, training: dict | None = None) -> dict:
    """The drill in process; `training` overrides the product's training settings (the suite's small
    drill trains the tests' quick model: its subject is the wiring, not the healed accuracy)."""
    d = Drill(home, args, training=training)
    print(f"1. training on {args.faces} clean SYNTHETIC faces ...", flush=True)
    d.run(d.moodloop, "train", "--data", str(d.batch("clean", args.faces, seed=0, shift=None)))
    d.start_gateway()
    try:

        def judge() -> dict:  # the drift job in process, retraining through the drill's hook
            return drift.run_window(d.settings, retrain=d.retrain).as_dict()

        def shifted_batch() -> None:
            if d.mode == "batch":
                d.run(d.moodloop, "curate", str(d.batch("shifted", d.budget, seed=1, shift=args.shift)))

        figures, shifted_at, _ = clean_then_shifted_windows(d, args, judge, shifted_batch)
        if d.mode != "batch" and figures["windows_to_flag"]:
            figures["labels"] = ask_and_label(d, args, figures)
            figures["retrain"] = brief(d.retrain(d.settings, {"reason": "labelled faces landed"}))
        version = (figures.get("retrain") or {}).get("pushed_version")
        if version:
            d.wait_until(
                lambda: d.call("GET", f"/v1/models/emotion/versions/{version}").get("model_version_status"), 120, "v"
            )
            figures["seconds_shift_to_new_model_serving"] = round(time.monotonic() - shifted_at, 1)
            label = "canary" if "canary" in d.call("GET", "/healthz")["labels"] else "stable"
            figures["shifted_accuracy_after"] = d.traffic(
                seed=AFTER_SEED, shift=args.shift, label=label, feedback=False, faces=AFTER_FACES
            )
            figures["after_over_clean"] = figures["shifted_accuracy_after"] / figures["clean_accuracy"]
    finally:
        d.stop()
    figures["labels_delayed_by_rate_limit"] = d.labels_delayed
    figures["feedback"] = {"share": d.feedback_share, "labels_sent": d.feedback_sent}
    return figures


def labels_of(args: argparse.Namespace) -> tuple[str, int]:
    """--labels MODE:N -> (mode, N); `batch` without N: --faces."""
    mode, _, n = (getattr(args, "labels", None) or "batch").partition(":")
    if mode not in LABEL_MODES:
        raise SystemExit(f"--labels {mode!r}: one of {', '.join(LABEL_MODES)} (e.g. loop:500)")
    return mode, int(n) if n else args.faces


def feedback_share_of(args: argparse.Namespace, mode: str) -> float:
    """The share of live faces users label by feedback: --feedback-share, by default every face
    with a batch (today's drill) and a quarter with loop or random labels, where labels are few.
    The A/B gate judges a retrain after a drift on those faces too (typical traffic, which the
    queue's choice is not), and self-training leaves them alone (components/live_faces.py)."""
    share = getattr(args, "feedback_share", None)
    if share is None:
        return 1.0 if mode == "batch" else DEFAULT_LABEL_MODE_FEEDBACK_SHARE
    if not 0.0 <= share <= 1.0:
        raise SystemExit(f"--feedback-share {share}: a share between 0 and 1")
    return share


def label_settings(args: argparse.Namespace) -> dict[str, str]:
    """The loop's labelling settings for a drill: the queue holds exactly the faces to label."""
    mode, n = labels_of(args)
    if mode == "batch":
        return {}
    return {
        "MOODLOOP_KEEP_LIVE_FACES": "1",
        # the drill sends its whole day's traffic within the hour: keep every face it sends
        "MOODLOOP_LIVE_FACES_PER_HOUR": "100000",
        "MOODLOOP_LABEL_STRATEGY": mode,
        "MOODLOOP_LABEL_BUDGET": str(n),
        "MOODLOOP_LABEL_QUEUE_FACES": str(n),
    }


def ask_and_label(d: Drill, args: argparse.Namespace, figures: dict) -> dict:
    """In process, after the flag: users go on sending shifted faces (the pool the queue chooses
    from: --label-pool, no feedback labels), the drift job's queue task runs (here called), the
    labellers answer what the queue asks, and the batch of answers is curated."""
    from monitoring import labelling

    pool = getattr(args, "label_pool", 0) or 4 * d.budget
    print(f"   users send {pool} more shifted faces; the drift job queues {d.budget} to label ({d.mode})", flush=True)
    for w in range(0, pool, args.window):
        d.traffic(seed=5000 + w, shift=args.shift, feedback=False, faces=min(args.window, pool - w))
    since = json.loads((d.settings.home / "monitoring" / "drift_state.json").read_text()).get("drift_since")
    queued = labelling.fill_queue(d.settings, since or None, reason="drift (the drill)")
    started = time.monotonic()
    answered, complete = d.answer_queue(d.budget)
    if not complete:
        raise RuntimeError(f"{answered} answers did not complete a batch of {d.budget} ({queued})")
    batch = d.labelled_batch()
    seconds = round(time.monotonic() - started, 1)
    print(f"   {answered} faces labelled in {seconds} s; their batch {batch.name} lands", flush=True)
    d.run(d.moodloop, "curate", str(batch))
    return {"mode": d.mode, "budget": d.budget, "pool_faces": queued.get("from_faces"), "labelled": answered}


def clean_then_shifted_windows(d: Drill, args: argparse.Namespace, judge, shifted_batch) -> tuple[dict, float, float]:
    """Phases 2 and 3, the same in both ways of running: clean windows, then the shift. `judge()`
    returns the drift job's verdict on the window just sent; `shifted_batch()` lands the shifted
    labelled faces. -> (figures, shift time on the monotonic clock, shift time on the wall clock)."""
    print(f"2. {args.clean_windows} clean windows of {args.window} requests; the drift job judges each", flush=True)
    figures: dict = {"clean_windows": args.clean_windows}
    outcomes, clean_accuracy, calls = [], [], []
    for w in range(args.clean_windows):
        clean_accuracy.append(d.traffic(seed=1000 + w, shift=None))
        decision = judge()
        outcomes.append(decision["outcome"])
        calls.append(closest_call(w + 1, decision))
        print(f"   clean window {w + 1}: {outcomes[-1]}, accuracy {clean_accuracy[-1]:.3f}", flush=True)
    figures["false_alarms"] = sum(o == "drift" for o in outcomes)
    figures["clean_accuracy"] = float(np.mean(clean_accuracy))
    # How near the clean windows came to a false alarm: the window with the most drifted columns
    # (then the lowest p-value), and its lowest p-values against the test's level
    judged_calls = [c for c in calls if c is not None]
    if judged_calls:
        figures["closest_clean_call"] = max(judged_calls, key=lambda c: (c["drift_share"], -c["lowest_p"][0][1]))

    arrives = "a shifted labelled batch lands" if d.mode == "batch" else "no labelled batch: the loop will ask"
    print(f"3. the shift ({args.shift_name}); {arrives}", flush=True)
    shifted_at, shifted_wall = time.monotonic(), time.time()
    shifted_batch()
    figures["windows_to_flag"], before = None, []
    for w in range(args.shift_windows):
        before.append(d.traffic(seed=2000 + w, shift=args.shift))
        decision = judge()
        print(f"   shifted window {w + 1}: {decision['outcome']}, accuracy {before[-1]:.3f}", flush=True)
        if decision["outcome"] == "drift":
            figures["windows_to_flag"], figures["retrain"] = w + 1, brief(decision.get("retrain"))
            break
    figures["shifted_accuracy_before"] = float(np.mean(before))
    return figures, shifted_at, shifted_wall


def closest_call(window: int, decision: dict) -> dict | None:
    """A clean window's verdict in numbers: the share of drifted columns (and the share that flags)
    and its three lowest p-values (per column: Kolmogorov-Smirnov's, chi-square's for the predicted
    class; a column drifts below drift.KS_P_VALUE)."""
    summary = decision.get("drift") or {}
    columns = summary.get("columns") or {}
    p_values = sorted(((column, row["score"]) for column, row in columns.items()), key=lambda pair: pair[1])
    if not p_values:
        return None
    return {
        "window": window,
        "drift_share": summary.get("drift_share", 0.0),
        "flags_at": summary.get("threshold"),
        "ks_level": drift.KS_P_VALUE,
        "lowest_p": [(column, round(p, 5)) for column, p in p_values[:3]],
    }


def brief(retrain: dict | None) -> dict:
    """What the drift job did about the retrain, without the conf it sent (the drift decisions
    file has that in full)."""
    return {k: v for k, v in (retrain or {}).items() if k != "conf"}


# The loop's own timings, shortened so that a drill ends in minutes, not hours.
STACK_HEAL_SECONDS = 600  # the stack drill's goal: the new stable version within 10 minutes of the shift
STACK_TIMINGS = {
    "MOODLOOP_DRIFT_EVERY_MINUTES": "1",
    "MOODLOOP_CANARY_EVERY_MINUTES": "1",
    # Shorter than the analysis period: a bake equal to it passes on the next run or on the one
    # after, by the scheduler's jitter (a stack drill's step read "baking: 60 s of 60 s" and
    # waited a minute more, and the new stable came 600.6 s after the shift).
    "MOODLOOP_CANARY_BAKE_SECONDS": "50",
    "MOODLOOP_CANARY_STEPS": "0.5,1.0",
    "MOODLOOP_CANARY_MIN_REQUESTS": "100",
    "MOODLOOP_CANARY_MIN_LABELS": "50",
    "MOODLOOP_LANDING_SETTLE_SECONDS": "2",
    "MOODLOOP_LOG_FLUSH_SECONDS": "1",
}


def stack_drill(args: argparse.Namespace, home: Path) -> dict:
    """The drill on the local stack: Airflow's scheduler runs monitor_drift, train_emotion_model and
    canary_analysis; the drill only plays the users (live requests, feedback labels) and the
    labellers (a shifted batch lands in the landing zone)."""

    os.environ.update(
        {
            **STACK_TIMINGS,
            **label_settings(args),
            **{p: str(free_port()) for p in stack.PORT_VARIABLES},
            "MOODLOOP_HOME": str(home),
            "MOODLOOP_DRIFT_WINDOW_RECORDS": str(args.window),
            "MOODLOOP_SEED": str(args.seed),
            "MOODLOOP_PROFILE": args.profile,
        }
    )
    settings = Settings.from_env()
    if stack.start(settings, faces=args.faces) != 0:
        raise SystemExit("the drill's stack is already running: stop it first (see --help)")
    d = Drill(home, args, env=dict(os.environ))
    print(f"\n1. the stack trains the first model on {args.faces} clean faces by itself ...", flush=True)
    d.wait_until(lambda: d.labels().get("stable"), args.timeout, "the first model")
    first = d.labels()["stable"]
    print(f"   version {first} serves as stable", flush=True)

    judged = itertools.count()

    def judge() -> dict:  # monitor_drift's verdict, run by Airflow's scheduler
        return d.next_decision(next(judged), 600)

    def shifted_batch() -> None:  # into the landing zone: watch_landing and ingest_faces take it
        if d.mode == "batch":
            name = f"shifted-{time.strftime('%Y%m%dT%H%M%S')}"
            stack.drop_synthetic_batch(settings, name, d.budget, 1, args.shift)

    figures, shifted_at, shifted_wall = clean_then_shifted_windows(d, args, judge, shifted_batch)

    print("4. shifted traffic goes on while the loop retrains, canaries and promotes by itself", flush=True)
    deadline, canary, seeds = time.monotonic() + args.timeout, None, itertools.count()
    lags: list[float | None] = []  # the scheduler's heartbeat age at each window (its health endpoint)
    rounds = getattr(args, "label_rounds", 1)
    labelled: dict = {"mode": d.mode, "budget": d.budget, "rounds": rounds, "answered": 0, "batches": 0}
    labelled["complete"] = False
    if d.mode != "batch":
        figures["labels"] = labelled
    while time.monotonic() < deadline:
        try:
            labels = d.labels()
        except OSError:  # the gateway busy on a loaded machine: ask again
            labels = {}
        if not labels.get("stable"):
            time.sleep(5)
            continue
        if labels.get("canary") and labels["canary"] != canary:  # the first canary, or a newer one
            canary = labels["canary"]
            figures.setdefault("seconds_shift_to_canary", round(time.monotonic() - shifted_at, 1))
            print(f"   version {canary} is the canary ({time.monotonic() - shifted_at:.0f} s after the shift)")
        if labels.get("stable") != first:
            figures["seconds_shift_to_new_model_serving"] = round(time.monotonic() - shifted_at, 1)
            figures["new_stable_version"] = labels["stable"]
            print(f"   version {labels['stable']} promoted to stable by canary_analysis", flush=True)
            break
        # Not "no canary label right now": the pusher drops the label for a moment when it
        # replaces a canary. The canary analysis's own decision says it was rolled back.
        if canary is not None and rolled_back(home, canary):
            figures["canary_rolled_back"] = canary
            print(f"   the canary (version {canary}) was rolled back", flush=True)
            break
        lags.append(heartbeat_lag(settings))
        try:
            d.traffic(seed=4000 + next(seeds), shift=args.shift)
            if d.mode != "batch" and not labelled["complete"]:
                label_what_is_queued(d, labelled, shifted_at)
        except OSError as error:  # a request timed out while training holds the 2 cores
            print(f"   (a window of traffic failed: {error}; going on)", flush=True)
        time.sleep(args.pause)  # users, not a load test: leave the 2 cores to the training
    if "new_stable_version" in figures:
        figures["shifted_accuracy_after"] = d.traffic(
            seed=AFTER_SEED, shift=args.shift, label="stable", feedback=False, faces=AFTER_FACES
        )
        figures["after_over_clean"] = figures["shifted_accuracy_after"] / figures["clean_accuracy"]
    figures["train_runs_after_shift"] = train_runs_since(settings, shifted_wall)
    figures["scheduler_heartbeat_lag_s"] = lag_figures(lags)
    figures["canary_decisions"] = [decision_brief(d) for d in canary_decisions(home) if d.get("action") != "none"]
    figures["gate_verdicts"] = gate_verdicts(settings)
    figures["drift_reports"] = str(home / "monitoring" / "drift")
    figures["labels_delayed_by_rate_limit"] = d.labels_delayed
    figures["feedback"] = {"share": d.feedback_share, "labels_sent": d.feedback_sent}
    return figures


def label_what_is_queued(d: Drill, labelled: dict, shifted_at: float) -> None:
    """On the stack: the labellers answer what monitor_drift's queue task has queued so far, one
    budget after another while the drift lasts, for --label-rounds budgets at most."""
    answered, batch_complete = d.answer_queue(d.budget * (labelled["batches"] + 1) - labelled["answered"])
    labelled["answered"] += answered
    if batch_complete:
        labelled["batches"] += 1
        labelled.setdefault("seconds_shift_to_labels_landed", [])
        labelled["seconds_shift_to_labels_landed"].append(round(time.monotonic() - shifted_at, 1))
        labelled["complete"] = labelled["batches"] >= labelled["rounds"]
        print(f"   {labelled['answered']} faces labelled; their batch lands (round {labelled['batches']})", flush=True)


def canary_decisions(home: Path) -> list[dict]:
    decisions = home / "serving" / "canary_decisions.jsonl"
    return [json.loads(line) for line in (decisions.read_text().splitlines() if decisions.exists() else [])]


def rolled_back(home: Path, version: int) -> bool:
    return any(d.get("action") == "rollback" and d.get("canary_version") == version for d in canary_decisions(home))


def gate_verdicts(settings: Settings) -> list[dict]:
    """Each A/B gate verdict of the drill's stack, oldest first: on which faces, both accuracies."""
    reports = sorted(
        (settings.pipeline_root / "ABGate" / "report").glob("*/gate_report.json"), key=lambda p: p.stat().st_mtime
    )
    verdicts = []
    for path in reports:
        gate = json.loads(path.read_text())
        judged = {k: v for k, v in (gate.get("judged") or {}).items() if k != "why"}
        numbers = {k: round(gate[k], 3) for k in ("candidate_accuracy", "champion_accuracy") if k in gate}
        p_value = (gate.get("mcnemar") or {}).get("p_value")
        verdicts.append({"verdict": gate.get("verdict"), "judged": judged, **numbers, "mcnemar_p": p_value})
    return verdicts


def decision_brief(decision: dict) -> dict:
    """One canary decision in the drill's figures: what it did, on which evidence, both sides' numbers."""

    def side(numbers: dict | None) -> dict:
        numbers = numbers or {}
        keep = ("requests", "labelled", "accuracy", "mean_confidence")
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in numbers.items() if k in keep}

    return {
        "action": decision.get("action"),
        "canary": decision.get("canary_version"),
        "evidence": decision.get("evidence"),
        "canary_side": side(decision.get("canary")),
        "stable_side": side(decision.get("stable")),
        "reasons": decision.get("reasons", [])[:2],
    }


def lag_figures(lags: list[float | None]) -> dict | None:
    seen = [lag for lag in lags if lag is not None]
    return {"median": float(np.median(seen)), "max": max(seen), "samples": len(seen)} if seen else None


def heartbeat_lag(settings: Settings) -> float | None:
    """Seconds since the scheduler's latest heartbeat, from Airflow's health endpoint (None when it
    does not answer): how far behind a loaded machine, or a database, leaves the scheduler."""
    try:
        health = stack.api(settings).monitor.get_health(_request_timeout=10)
        beat = health.scheduler.latest_scheduler_heartbeat
    except Exception:  # noqa: BLE001 - a busy api-server: this sample is missing, not the drill
        return None
    if not beat:
        return None
    beat = beat if isinstance(beat, datetime.datetime) else datetime.datetime.fromisoformat(str(beat))
    return round(time.time() - beat.timestamp(), 1)


def train_runs_since(settings: Settings, since: float) -> list[dict]:
    """train_emotion_model's runs since the shift, and what started each (drift or new data)."""

    airflow = stack.api(settings)
    runs = airflow.dag_runs.get_dag_runs(
        "train_emotion_model", limit=20, order_by=["-id"], _request_timeout=airflow.timeout
    ).dag_runs
    return [
        {
            "run_id": r.dag_run_id,
            "run_type": r.run_type.value,
            "reason": (r.conf or {}).get("reason"),
            "state": r.state.value,
            "seconds": round((r.end_date - r.start_date).total_seconds(), 1) if r.end_date and r.start_date else None,
            "tasks": task_timings(airflow, r.dag_run_id),
        }
        for r in runs
        if r.run_after.timestamp() >= since
    ]


def task_timings(airflow, run_id: str) -> dict[str, list[float | None]]:
    """{task: [seconds queued before it ran, seconds it ran]} in start order: where a run's time goes
    (the scheduler's and the executor's waits, or the work itself)."""
    tasks = airflow.task_instances.get_task_instances(
        "train_emotion_model", run_id, _request_timeout=airflow.timeout
    ).task_instances
    started = sorted((t for t in tasks if t.start_date), key=lambda t: t.start_date)
    seconds = lambda a, b: round((b - a).total_seconds(), 1) if a and b else None  # noqa: E731
    return {t.task_id: [seconds(t.queued_when, t.start_date), seconds(t.start_date, t.end_date)] for t in started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", action="store_true", help="run it on the local stack (Airflow schedules all)")
    parser.add_argument("--faces", type=int, default=4000, help="faces per labelled batch (clean, shifted)")
    parser.add_argument(
        "--labels",
        default="batch",
        help="how labels of the shifted faces arrive: batch[:N] (a labelled batch of N lands with the shift; "
        "default --faces), loop:N (no batch: the loop queues the N live faces it wants labelled and the "
        "drill answers them in the Label tab's API), random:N (the same with N faces drawn at random)",
    )
    parser.add_argument(
        "--label-pool", type=int, default=0, help="--labels loop|random: live shifted faces to choose from (4 x N)"
    )
    parser.add_argument(
        "--label-rounds",
        type=int,
        default=1,
        help="--stack --labels loop|random: the labellers go on answering the queue while the drift lasts, "
        "up to this many batches of N (default 1)",
    )
    parser.add_argument(
        "--feedback-share",
        type=float,
        help="share of live faces the users label by feedback (default 1 with --labels batch, "
        f"{DEFAULT_LABEL_MODE_FEEDBACK_SHARE} with loop or random: labels are few there)",
    )
    parser.add_argument("--shift", choices=sorted(SHIFTS), default="dim", help="which shift (default dim)")
    parser.add_argument(
        "--seed", type=int, default=0, help="another draw of every face and of the training (default 0: the usual)"
    )
    parser.add_argument("--window", type=int, default=200, help="requests per window")
    parser.add_argument("--clean-windows", type=int, help="clean windows (default 20; 5 with --stack)")
    parser.add_argument("--shift-windows", type=int, default=4, help="shifted windows at most before giving up")
    parser.add_argument("--timeout", type=float, default=2400, help="--stack: seconds to wait for each model")
    parser.add_argument("--pause", type=float, default=10, help="--stack: seconds between windows while retraining")
    parser.add_argument("--stop", action="store_true", help="--stack: stop the stack at the end")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="embedded",
        help="--stack: the stack's profile (production: PostgreSQL, Celery, two serving replicas)",
    )
    parser.add_argument(
        "--home", type=Path, help="work folder (default: a new temporary one; .moodloop/drill-<time> with --stack)"
    )
    args = parser.parse_args(argv)
    args.shift_name, args.shift = args.shift, SHIFTS[args.shift]
    if args.clean_windows is None:
        args.clean_windows = 5 if args.stack else 20
    if args.stack:
        home = (args.home or REPO / ".moodloop" / f"drill-{time.strftime('%Y%m%dT%H%M%S')}").resolve()
        try:
            figures = stack_drill(args, home)
        except BaseException:
            if args.stop:
                stack.stop(Settings.from_env())
            else:
                print(
                    f"\nthe drill failed; its stack is still running: MOODLOOP_HOME={home} make stop", file=sys.stderr
                )
            raise
    else:
        home = args.home or Path(tempfile.mkdtemp(prefix="moodloop-drill-"))
        figures = drill(args, home)
    where = "local stack" if args.stack else "in process"
    knobs = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(args.shift).items() if v != getattr(NO_SHIFT, k))
    print(f"\n== drift drill ({where}, shift {args.shift_name}: {knobs}; SYNTHETIC faces) ==")
    print(json.dumps(figures, indent=1, default=str))
    goals = {
        "flagged within 2 windows": figures["windows_to_flag"] is not None and figures["windows_to_flag"] <= 2,
        f"no false alarm in {args.clean_windows} clean windows": figures["false_alarms"] == 0,
        "healed: after/clean accuracy >= 0.95": figures.get("after_over_clean", 0) >= 0.95,
    }
    if args.stack:
        seconds = figures.get("seconds_shift_to_new_model_serving")
        goals[f"new stable within {STACK_HEAL_SECONDS // 60} minutes of the shift"] = (
            seconds is not None and seconds <= STACK_HEAL_SECONDS
        )
    print("goals: " + "; ".join(f"{goal}: {met}" for goal, met in goals.items()))
    # The drill is the product's proof: a run that does not heal fails (exit status 1), whatever
    # else it printed. (Its stack is still stopped with --stop.)
    healed = all(goals.values())
    if not healed:
        print("THE LOOP DID NOT HEAL: " + ", ".join(goal for goal, met in goals.items() if not met), file=sys.stderr)
    if args.stack:
        settings = Settings.from_env()
        if args.stop:
            return max(stack.stop(settings), 0 if healed else 1)
        print(
            "\nThe stack is still running, so you can look:\n"
            f"  drift reports  http://127.0.0.1:{settings.drift.evidently_port}"
            f'  (Evidently UI, project "{drift.PROJECT}")'
            f"  and {home / 'monitoring' / 'drift'}/*.html\n"
            f"  Airflow UI     {settings.airflow.url}  user admin, password in {settings.airflow.password_file}\n"
            f"  stop it        MOODLOOP_HOME={home} make stop"
        )
    return 0 if healed else 1


if __name__ == "__main__":
    sys.exit(main())
