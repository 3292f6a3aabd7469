"""The drift job on windows of a real inference log (the inference-log contract's Parquet) against a reference
profile: clean windows raise nothing, a darker and blurrier shift is flagged and triggers exactly
one retrain (cool-down), malformed records are an incident and trigger nothing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data import synthetic
from monitoring import drift
from moodloop.core import accuracy_estimate, status
from moodloop.core.contracts import ACCURACY_ESTIMATOR, EMOTIONS, LOG_PROBABILITY_COLUMNS, REFERENCE_PROFILE
from moodloop.core.log_records import PREDICTION_SCHEMA, Prediction, prediction_row
from moodloop.core.settings import Settings


def _rows(
    n: int, seed: int, shift: synthetic.Shift | None = None, t0: float = 0.0, labels: list[str] | None = None
) -> list[dict]:
    """Log rows for synthetic faces; the 'model' is a fixed function of the pixels, so a shift in
    the images moves its predictions and embedding the way a real model's would. `labels`, when
    given, receives each face's true emotion."""
    rows = []
    rng = np.random.default_rng(seed)
    for i, face in enumerate(synthetic.generate(n, seed, shift or synthetic.Shift())):
        pixels = face.pixels.astype(np.float64) / 255
        embedding = pixels.reshape(4, 12, 2, 24).mean(axis=(1, 3)).reshape(-1)  # 8 region means
        logits = np.array([pixels[:24].mean(), pixels[24:].mean(), pixels.std(), 0.3, 0.2, 0.1, 0.5]) * 4
        logits = logits + rng.normal(0, 0.1, 7)
        probabilities = np.exp(logits) / np.exp(logits).sum()
        record = Prediction(
            request_id=f"{seed}-{i}",
            instance=0,
            client_id="c",
            model_name="emotion",
            model_version=1,
            model_label="stable",
            signature="serving_pixels",
            api="rest",
            latency_ms=2.0,
            probabilities=probabilities,
            pixels=face.pixels,
            embedding=embedding,
            timestamp=t0 + i * 0.001,
        )
        rows.append(prediction_row(record))
        if labels is not None:
            labels.append(EMOTIONS[face.label])
    return rows


def _estimator(reference: list[dict], truth: list[str], seed: int) -> accuracy_estimate.LearnedEstimator:
    """The version's accuracy estimator, fitted as the gate fits one (components/accuracy_estimator.py)
    but on this test's 'model': windows of its held-out rows, clean and shifted, with their truth."""
    frame = pd.DataFrame(reference).assign(label=truth)
    probabilities = frame[list(LOG_PROBABILITY_COLUMNS)].to_numpy()
    held_out = accuracy_estimate.HeldOutStats.of(
        probabilities,
        frame["label"].map(EMOTIONS.index).to_numpy(),
        {c: frame[c].to_numpy() for c in accuracy_estimate.PROPERTIES},
        frame[accuracy_estimate.embedding_columns(frame.columns)].to_numpy(),
    )
    features, accuracies = [], []
    for w, shift in enumerate([None] * 8 + [synthetic.Shift(brightness=-0.1 * k, blur=0.5 * k) for k in (1, 2, 3)] * 4):
        window_truth: list[str] = []
        window = pd.DataFrame(_rows(150, seed=seed + w, shift=shift, labels=window_truth))
        features.append(accuracy_estimate.frame_features(window, held_out))
        accuracies.append(float((window["predicted_class"] == pd.Series(window_truth)).mean()))
    return accuracy_estimate.fit_learned(held_out, np.array(features), np.array(accuracies))


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), path)


def _log_window(settings: Settings, name: str, rows: list[dict]) -> None:
    _write(Path(settings.inference_log_url) / "predictions" / "date=2026-11-21" / "hour=12" / f"{name}.parquet", rows)


def test_clean_windows_pass_a_shift_retrains_once_and_bad_records_are_an_incident(tmp_path, webhook):
    url, alerts_received = webhook
    settings = Settings.from_env(
        home=tmp_path / "home",
        inference_log_url=str(tmp_path / "home" / "inference_log"),
        drift={"window_records": 300, "cooldown_minutes": 60},
        alerts={"webhook_url": url},
    )
    truth: list[str] = []
    reference = _rows(1500, seed=1, labels=truth)
    # The version as the Pusher leaves it: its held-out faces with their labels, and its estimator.
    profile = pa.Table.from_pylist(reference, schema=PREDICTION_SCHEMA).append_column("label", pa.array(truth))
    (settings.model_base / "1" / REFERENCE_PROFILE).parent.mkdir(parents=True)
    pq.write_table(profile, settings.model_base / "1" / REFERENCE_PROFILE)
    estimator = _estimator(reference, truth, seed=5000)
    (settings.model_base / "1" / ACCURACY_ESTIMATOR).write_text(json.dumps(estimator.as_dict()))
    retrains: list[dict] = []

    def retrain(_, conf):
        retrains.append(conf)
        return {"dag_run_id": f"manual__{len(retrains)}", "conf": conf}

    t, outcomes, true_accuracy = 1_000_000.0, [], []
    for w in range(5):  # clean traffic
        window_truth: list[str] = []
        rows = _rows(300, seed=100 + w, t0=t, labels=window_truth)
        true_accuracy.append(np.mean([r["predicted_class"] == e for r, e in zip(rows, window_truth, strict=True)]))
        _log_window(settings, f"clean-{w}", rows)
        outcomes.append(drift.run_window(settings, now=t + 1, retrain=retrain).outcome)
        t += 60
    assert outcomes == ["no_drift"] * 5 and retrains == []

    darker = synthetic.Shift(brightness=-0.3, blur=1.5, face_scale=0.75)
    results = []
    for w in range(2):  # the shift: flagged at once, one retrain despite two drifted windows
        _log_window(settings, f"shifted-{w}", _rows(300, seed=200 + w, shift=darker, t0=t))
        results.append(drift.run_window(settings, now=t + 1, retrain=retrain))
        t += 60
    print(drift.describe(results[0]))
    assert [r.outcome for r in results] == ["drift", "drift"]
    assert "brightness" in results[0].drift["drifted_by_group"]["image_properties"]
    assert len(retrains) == 1 and retrains[0]["reason"] == "drift"
    # where the drift began, kept across drifted windows: the labelling queue chooses from there
    assert results[0].window["drift_since"] == results[1].window["drift_since"] == results[0].window["since"]
    assert Path(retrains[0]["report"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert "cool-down" in results[1].retrain["suppressed"]
    # Each window's accuracy estimated without labels, by the estimator the version carries.
    decisions = [json.loads(line) for line in (settings.home / "monitoring" / "drift_decisions.jsonl").open()]
    estimated = [d["accuracy_estimate"]["1"] for d in decisions]
    assert all(e["decides"] == accuracy_estimate.LEARNED for e in estimated)
    for found, truth in zip(estimated[:5], true_accuracy, strict=True):
        assert found["learned"]["low"] <= truth <= found["learned"]["high"], (found, truth)
    assert "estimated accuracy" in drift.describe(results[0]) and "no labels yet" in drift.describe(results[0])
    # The latest verdict, for the faces page's model panel (moodloop/core/status.py), with its report.
    latest = status.read_status(settings.status_dir, status.DRIFT)
    assert latest["outcome"] == "drift" and latest["drift_share"] >= settings.drift.share and latest["report"]
    assert latest["accuracy_estimate"]["1"]["decides"] == accuracy_estimate.LEARNED
    report = status.status_file(settings.status_dir, status.DRIFT_REPORT)
    assert report.read_bytes() == Path(results[1].report_html).read_bytes()

    malformed = _rows(300, seed=300, t0=t)
    for row in malformed[:20]:
        row.update(brightness=None, predicted_class="bored", prob_angry=5.0)
    _log_window(settings, "malformed", malformed)
    incident = drift.run_window(settings, now=t + 7200, retrain=retrain)  # after the cool-down
    print(drift.describe(incident))
    assert incident.outcome == "incident" and len(retrains) == 1
    meanings = " ".join(f["meaning"] for f in incident.quality_failures)
    assert "classes are emotions" in meanings and "probabilities sum to 1" in meanings and "brightness" in meanings

    waiting = drift.run_window(settings, now=t + 7300, retrain=retrain)
    assert waiting.outcome == "waiting"
    latest = status.read_status(settings.status_dir, status.DRIFT)
    assert latest["outcome"] == "incident" and latest["report"] is None  # waiting is no verdict; no report here

    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.drift.evidently_workspace))
    (project,) = workspace.list_projects()
    assert project.name == "moodloop drift" and len(workspace.list_runs(project.id)) == 7
    panels = [panel.title for panel in project.dashboard.model().panels]  # made once, not once per window
    assert panels == [panel.title for panel in drift.dashboard_panels()] and len(panels) == 5
    # The dashboard's accuracy panel reads each window's average of the estimated accuracy.
    run = workspace.get_run(project.id, workspace.list_runs(project.id)[0])
    shown = [m.display_name for m in run.metric_results.values()]
    assert "Mean value of 'estimated_accuracy'" in shown
    decisions = (settings.home / "monitoring" / "drift_decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in decisions] == ["no_drift"] * 5 + ["drift", "drift", "incident"]
    # Each verdict that needs a person posted one message to the webhook (moodloop/core/alerts.py).
    events = [message["moodloop"]["event"] for message in alerts_received]
    assert events == ["drift", "drift", "quality_incident"]
    drifted = alerts_received[0]
    assert "drift" in drifted["text"] and drifted["moodloop"]["link"].startswith("http://127.0.0.1:")
    assert drifted["moodloop"]["numbers"]["retrain"]["dag_run_id"] == "manual__1"
    assert "brightness" in str(drifted["moodloop"]["numbers"]["drifted"])
    assert "classes are emotions" in alerts_received[2]["moodloop"]["numbers"]["broken"]


def test_with_live_faces_kept_drift_waits_for_the_labels_it_asks_for(tmp_path):
    """Kept live faces (the labelling queue on): a drifted window retrains nothing on the labels
    it already has, says so, and remembers where the drift began until a window without drift."""
    settings = Settings.from_env(
        home=tmp_path / "home",
        inference_log_url=str(tmp_path / "home" / "inference_log"),
        drift={"window_records": 300},
        serving={"keep_live_faces": True},
    )
    reference = _rows(1500, seed=1)
    (settings.model_base / "1" / REFERENCE_PROFILE).parent.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(reference, schema=PREDICTION_SCHEMA), settings.model_base / "1" / REFERENCE_PROFILE
    )

    def retrain(_, conf):
        raise AssertionError(f"no retrain before the labels land: {conf}")

    t, darker, results = 1_000_000.0, synthetic.Shift(brightness=-0.3, blur=1.5, face_scale=0.75), []
    for w, shift in enumerate([None, darker, darker, None]):
        _log_window(settings, f"window-{w}", _rows(300, seed=400 + w, shift=shift, t0=t))
        results.append(drift.run_window(settings, now=t + 1, retrain=retrain))
        t += 60
    assert [r.outcome for r in results] == ["no_drift", "drift", "drift", "no_drift"]
    assert "MOODLOOP_LABEL_BUDGET=500" in results[1].retrain["waits_for_labels"]
    assert results[1].window["drift_since"] == results[2].window["drift_since"] == results[1].window["since"]
    assert results[0].window["drift_since"] is None and results[3].window["drift_since"] is None


def _dag_run(run_id: str, state: str, run_after: str) -> dict:
    """A DAG run as Airflow 3.3's REST API v2 answers it (the official client checks every field)."""
    return {
        "dag_id": "train_emotion_model",
        "dag_display_name": "train_emotion_model",
        "dag_run_id": run_id,
        "dag_versions": [],
        "run_after": run_after,
        "run_type": "manual",
        "state": state,
        "conf": {},
    }


def test_retrain_goes_through_airflow_rest_api_v2_with_a_token(tmp_path):
    seen: list[tuple[str, str, dict | None, str | None]] = []
    active_runs: list[dict] = []

    class FakeAirflow(BaseHTTPRequestHandler):
        def answer(self, body: dict | None) -> None:
            seen.append((self.command, self.path, body, self.headers.get("Authorization")))
            authorized = self.headers.get("Authorization") == "Bearer tok"
            if self.path == "/auth/token":
                answer = {"access_token": "tok"} if body == {"username": "admin", "password": "pw"} else None
            elif self.command == "GET":
                wanted = self.path.endswith("/dagRuns?state=queued&state=running")
                answer = {"dag_runs": active_runs, "total_entries": len(active_runs)} if authorized and wanted else None
            else:
                answer = _dag_run("manual__x", "queued", "2026-11-22T00:50:00Z") if authorized else None
            self.send_response(200 if answer else 401)
            self.end_headers()
            self.wfile.write(json.dumps(answer or {"detail": "no"}).encode())

        def do_POST(self):
            self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def do_GET(self):
            self.answer(None)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), FakeAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = {"reason": "drift", "report": "r.html"}
    try:
        (tmp_path / "passwords.json").write_text('{"admin": "pw"}')
        settings = Settings.from_env(
            home=tmp_path,
            airflow={"url": f"http://127.0.0.1:{server.server_port}", "password_file": tmp_path / "passwords.json"},
        )
        run = drift.trigger_retrain(settings, conf)
        # A run from before the drifted window is not joined: it may train on pre-shift data only.
        window = {"window": {"since": "2026-11-22 00:47:04+00:00"}}
        active_runs.append(_dag_run("old__z", "running", "2026-11-22T00:40:00Z"))
        not_joined = drift.trigger_retrain(settings, conf | window)
        # New labelled data started a run after the window began: the drift joins it.
        active_runs.insert(0, _dag_run("asset_triggered__y", "queued", "2026-11-22T00:48:38Z"))
        joined = drift.trigger_retrain(settings, conf | window)
    finally:
        server.shutdown()
    assert run == {"dag_run_id": "manual__x", "conf": conf}
    assert seen[2] == (
        "POST",
        "/api/v2/dags/train_emotion_model/dagRuns",
        {"logical_date": None, "conf": conf},
        "Bearer tok",
    )
    assert not_joined == {"dag_run_id": "manual__x", "conf": conf | window}
    assert joined == {"already_running": "asset_triggered__y", "conf": conf | window}
    assert [(method, path) for method, path, _, _ in seen[6:]] == [
        ("POST", "/auth/token"),
        ("GET", "/api/v2/dags/train_emotion_model/dagRuns?state=queued&state=running"),
    ]


def test_make_status_says_what_the_labelling_queue_waits_for(tmp_path):
    from moodloop.local import stack

    settings = Settings.from_env(home=tmp_path / "home")
    assert stack.labelling_summary(settings) == ""  # no queue filled yet: nothing to say
    settings.labelling_dir.mkdir(parents=True)
    faces = [{"face_id": f"r-{i}"} for i in range(4)]
    (settings.labelling_dir / "queue.json").write_text(json.dumps({"strategy": "loop", "budget": 500, "faces": faces}))
    (settings.labelling_dir / "answers.jsonl").write_text('{"face_id": "r-1", "answer": "sad"}\n{"torn')
    line = stack.labelling_summary(settings)
    assert line.startswith("labelling queue (loop): 3 of 4 faces wait for a label") and "1 answered" in line
    waiting = {"outcome": "drift", "window": {"records": 300}, "retrain": {"waits_for_labels": "..."}}
    assert "the retrain waits for the labels the queue asks for" in stack.drift_summary(waiting)
