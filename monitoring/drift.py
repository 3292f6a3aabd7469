"""Drift monitoring: windows of the inference log against the served model's reference profile.

Each window (the records since the last window, once there are enough of them):
1. data quality first (Great Expectations on the logged records: schema, nulls, ranges). A broken
   client is an incident, not drift: it is reported and nothing is retrained;
2. Evidently reports image-property drift (brightness, contrast, sharpness), prediction drift
   (predicted class, confidence) and embedding drift (the model's PCA-reduced penultimate layer)
   against the reference profile that travels with the served version (the model contract's
   REFERENCE_PROFILE); the report goes into the Evidently workspace (`evidently ui`) and to a
   standalone HTML file;
3. triage: no drift / data-quality incident / drift. Drift triggers `train_emotion_model` through
   Airflow's REST API v2 with a conf naming the reason and the report, unless a retrain was
   triggered within the cool-down (one shift, one retrain) or one is already running;
4. each model version's accuracy on the window is estimated without labels (its estimator,
   moodloop/core/accuracy_estimate.py, travels in the version as ACCURACY_ESTIMATOR); with
   feedback labels, the realised live accuracy is reported beside it.

Runs in the orchestration env (Evidently, GX, pandas). `python -m monitoring.drift run` once;
the DAG `monitor_drift` runs it on a schedule.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from moodloop.core import accuracy_estimate, alerts, log_records, status
from moodloop.core.airflow_api import Airflow
from moodloop.core.contracts import (
    ACCURACY_ESTIMATOR,
    EMOTIONS,
    LOG_EMBEDDING_COLUMNS,
    LOG_FEEDBACK,
    LOG_PREDICTIONS,
    LOG_PROBABILITY_COLUMNS,
    REFERENCE_PROFILE,
    STABLE,
)
from moodloop.core.settings import Settings

log = logging.getLogger(__name__)

PROPERTY_COLUMNS = ("brightness", "contrast", "sharpness")
PREDICTION_COLUMNS = ("confidence",)
PROJECT = "moodloop drift"
KS_P_VALUE = 0.005


@dataclass
class WindowResult:
    outcome: str  # no_drift | drift | incident | waiting | no_reference
    window: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    quality_failures: list[dict[str, Any]] = field(default_factory=list)
    live_accuracy: dict[str, Any] = field(default_factory=dict)
    accuracy_estimate: dict[str, Any] = field(default_factory=dict)  # per version: {method: estimate}
    report_html: str | None = None
    retrain: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------- reading


def read_log(log_url: str, kind: str, since: pd.Timestamp | None = None, limit: int | None = None) -> pd.DataFrame:
    """The inference log as a frame, through the log's one reader (moodloop/core/log_records.py): it
    reads only the partitions and files that can hold records after `since`."""
    return log_records.read_log(log_url, kind, since, limit).to_pandas()


def reference_for(settings: Settings, window: pd.DataFrame) -> tuple[int | None, pd.DataFrame]:
    """The reference profile of the version that served most of the window's `stable` traffic
    (all traffic when there are no labels)."""
    served_stable = window["model_label"] == STABLE
    stable = window[served_stable] if served_stable.any() else window
    for version in stable["model_version"].value_counts().index:
        path = settings.model_base / str(int(version)) / REFERENCE_PROFILE
        if path.exists():
            return int(version), pd.read_parquet(path)
    return None, pd.DataFrame()


# ---------------------------------------------------------------- 1. quality


def quality_expectations() -> list[tuple[Any, str]]:
    import great_expectations as gx

    e = gx.expectations
    checks: list[tuple[Any, str]] = [
        (e.ExpectColumnValuesToNotBeNull(column="predicted_class"), "every record has a predicted class"),
        (e.ExpectColumnValuesToBeInSet(column="predicted_class", value_set=list(EMOTIONS)), "classes are emotions"),
        (e.ExpectColumnValuesToNotBeNull(column="model_version"), "every record names its model version"),
        (e.ExpectColumnValuesToBeBetween(column="prob_sum", min_value=0.99, max_value=1.01), "probabilities sum to 1"),
        (e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1), "confidence in 0..1"),
    ]
    for column in ("brightness", "contrast"):
        checks.append((e.ExpectColumnValuesToNotBeNull(column=column), f"{column} is known (the image decoded)"))
        checks.append((e.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=1), f"{column} in 0..1"))
    checks.append((e.ExpectColumnValuesToBeBetween(column="sharpness", min_value=0), "sharpness is not negative"))
    return checks


def check_quality(window: pd.DataFrame) -> list[dict[str, Any]]:
    from moodloop.core.expectations import run_suite

    missing = [
        c for c in ("predicted_class", "confidence", *PROPERTY_COLUMNS, *LOG_PROBABILITY_COLUMNS) if c not in window
    ]
    if missing:
        meaning = "the records follow the inference-log contract"
        return [{"meaning": meaning, "column": ", ".join(missing), "unexpected_count": len(window)}]
    frame = window.assign(prob_sum=window[list(LOG_PROBABILITY_COLUMNS)].sum(axis=1))
    _, failures, _ = run_suite("inference_log_quality", frame, quality_expectations(), index_column="request_id")
    return [{k: v for k, v in f.items() if k != "index"} | {"examples": f["index"][:10]} for f in failures]


# ---------------------------------------------------------------- 2. drift


ESTIMATED, LABELLED = "estimated_accuracy", "labelled_correct"  # the accuracy columns the report averages


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, drift_share: float, metadata: dict[str, str] | None = None
):
    """Evidently's DataDriftPreset over image properties, predictions and embeddings -> (snapshot, summary).
    Where the frames carry ESTIMATED and LABELLED (with_accuracy_columns), the report also averages
    them: the accuracy estimated without labels and the realised one, per window, for the dashboard."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue
    from evidently.presets import DataDriftPreset

    embedding = [c for c in LOG_EMBEDDING_COLUMNS if c in reference and c in current and reference[c].notna().all()]
    numerical = [*PROPERTY_COLUMNS, *PREDICTION_COLUMNS, *embedding]
    columns = [*numerical, "predicted_class"]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=["predicted_class"])
    # Windows hold a few hundred records: Evidently's default distance thresholds (Wasserstein 0.1)
    # would fire on sampling noise there, so numeric columns get the Kolmogorov-Smirnov test at a
    # strict p-value, which accounts for the window size.
    metrics = [DataDriftPreset(columns=columns, drift_share=drift_share, num_method="ks", num_threshold=KS_P_VALUE)]
    averaged = [c for c in (ESTIMATED, LABELLED) if c in current and c in reference and current[c].notna().any()]
    metrics += [MeanValue(column=c) for c in averaged]
    definition = DataDefinition(numerical_columns=numerical + averaged, categorical_columns=["predicted_class"])
    report = Report(metrics, include_tests=True)
    kept = columns + averaged
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[kept].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference[kept].reset_index(drop=True), data_definition=definition),
        timestamp=current["timestamp"].max().to_pydatetime() if "timestamp" in current and len(current) else None,
        metadata=metadata or {},
        tags=["moodloop", "drift"],
    )
    per_column: dict[str, dict[str, Any]] = {}
    share = 0.0
    results = snapshot.dict()
    for metric in results["metrics"]:
        name = metric["metric_name"]
        if name.startswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif name.startswith("ValueDrift(column="):
            column = name.split("column=", 1)[1].split(",", 1)[0]
            method = name.split("method=", 1)[1].split(",threshold", 1)[0]
            per_column[column] = {"method": method, "score": float(metric["value"]), "drifted": False}
    for test in results.get("tests", []):  # Evidently's own verdict per column (p-value or distance)
        if str(test.get("name", "")).startswith("Value Drift for column "):
            column = test["name"].removeprefix("Value Drift for column ")
            if column in per_column:
                per_column[column]["drifted"] = str(test.get("status")).endswith("FAIL")
    groups = {
        "image_properties": [c for c in PROPERTY_COLUMNS if per_column.get(c, {}).get("drifted")],
        "predictions": [c for c in ("predicted_class", *PREDICTION_COLUMNS) if per_column.get(c, {}).get("drifted")],
        "embedding": [c for c in embedding if per_column.get(c, {}).get("drifted")],
    }
    summary = {"drift_share": share, "threshold": drift_share, "columns": per_column, "drifted_by_group": groups}
    return snapshot, summary


def with_accuracy_columns(
    reference: pd.DataFrame, window: pd.DataFrame, feedback: pd.DataFrame, estimates: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames with ESTIMATED (each row: its version's estimate for the window; on the reference:
    the held-out truth) and LABELLED (1/0 where a feedback label says, else NaN)."""
    decided = {int(v): found[found["decides"]]["accuracy"] for v, found in estimates.items()}
    window = window.assign(**{ESTIMATED: window["model_version"].map(lambda v: decided.get(int(v)))})
    if feedback.empty:
        window[LABELLED] = float("nan")
    else:
        labels = feedback[["request_id", "instance", "label"]].drop_duplicates(["request_id", "instance"], keep="last")
        truth = window[["request_id", "instance"]].merge(labels, how="left", on=["request_id", "instance"])["label"]
        right = (window["predicted_class"].to_numpy() == truth.to_numpy()).astype(float)
        window[LABELLED] = pd.Series(right, index=window.index).where(truth.notna().to_numpy())
    if "label" in reference:
        correct = (reference["predicted_class"] == reference["label"]).astype(float)
        reference = reference.assign(**{ESTIMATED: correct.mean(), LABELLED: correct})
    return reference, window


def estimated_accuracy(settings: Settings, window: pd.DataFrame) -> dict[str, Any]:
    """Each version's accuracy on its share of the window, estimated without labels (by the
    estimator the version carries; CBPE alone for a version that carries none)."""
    found = {}
    for version, rows in window.groupby("model_version"):
        estimator = accuracy_estimate.load(settings.model_base / str(int(version)) / ACCURACY_ESTIMATOR)
        found[str(int(version))] = accuracy_estimate.estimate_frame(rows, estimator)
    return found


def live_accuracy(window: pd.DataFrame, feedback: pd.DataFrame) -> dict[str, Any]:
    if feedback.empty or window.empty:
        return {}
    joined = window.merge(feedback[["request_id", "instance", "label"]], on=["request_id", "instance"])
    return {
        str(int(version)): {
            "labelled": int(len(rows)),
            "accuracy": float((rows["predicted_class"] == rows["label"]).mean()),
        }
        for version, rows in joined.groupby("model_version")
    }


# ---------------------------------------------------------------- 3. triage and retrain


TRAIN_DAG = "train_emotion_model"  # the DAG a drift retrains with (dags/train_emotion_model.py)


def trigger_retrain(settings: Settings, conf: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v2/dags/train_emotion_model/dagRuns with a token from /auth/token (Airflow 3),
    unless a run is already queued or running that was started after the drifted window began
    (new labelled data of the shift may have started one): that run trains on the newest spans
    too, and a second one would only queue behind it. An older run is not joined: it may have
    started before the shift's data was curated."""
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    password = json.loads(settings.airflow.password_file.read_text())[settings.airflow.user]
    airflow = Airflow.connect(settings.airflow.url, settings.airflow.user, password, timeout=30)
    dag_runs, timeout = airflow.dag_runs, airflow.timeout
    active = dag_runs.get_dag_runs(TRAIN_DAG, state=["queued", "running"], _request_timeout=timeout).dag_runs
    since = (conf.get("window") or {}).get("since")
    active = [r for r in active if since is None or pd.Timestamp(r.run_after) >= pd.Timestamp(since)]
    if active:
        return {"already_running": active[0].dag_run_id, "conf": conf}
    run = dag_runs.trigger_dag_run(
        TRAIN_DAG, TriggerDAGRunPostBody(logical_date=None, conf=conf), _request_timeout=timeout
    )
    return {"dag_run_id": run.dag_run_id, "conf": conf}


def _state(settings: Settings) -> tuple[Path, dict[str, Any]]:
    path = settings.home / "monitoring" / "drift_state.json"
    return path, (json.loads(path.read_text()) if path.exists() else {})


def _workspace_project(settings: Settings, state: dict[str, Any]):
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.drift.evidently_workspace))
    project_id = state.get("project_id")
    if not project_id or workspace.get_project(project_id) is None:
        project = workspace.create_project(PROJECT)
        project.description = "Live inference log vs the served model's reference profile (moodloop)"
        workspace.update_project(project)
        project_id = str(project.id)
    dashboard = workspace.get_project(project_id).dashboard
    if not dashboard.model().panels:
        for panel in dashboard_panels():
            dashboard.add_panel(panel, tab="Drift")
    return workspace, project_id


def dashboard_panels() -> list:
    """The project's dashboard in the Evidently UI: drift over time at a glance, the reports behind it."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    share = PanelMetric(legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"})

    def per_column(columns: tuple[str, ...]) -> list:
        return [PanelMetric(legend=c, metric="ValueDrift", metric_labels={"column": c}) for c in columns]

    return [
        counter_panel("Share of drifted columns, latest window", [share], size="half"),
        line_plot_panel("Share of drifted columns per window", [share], size="half"),
        line_plot_panel(
            "Image properties per window", per_column(PROPERTY_COLUMNS), "Kolmogorov-Smirnov p-value", size="half"
        ),
        line_plot_panel(
            "Accuracy per window: estimated without labels, and on feedback labels where there are any",
            [
                PanelMetric(legend="estimated (no labels)", metric="MeanValue", metric_labels={"column": ESTIMATED}),
                PanelMetric(legend="on feedback labels", metric="MeanValue", metric_labels={"column": LABELLED}),
            ],
            "accuracy",
            size="full",
        ),
        line_plot_panel(
            "Predictions per window",
            per_column(("predicted_class", *PREDICTION_COLUMNS)),
            "class mix: Jensen-Shannon distance; confidence: Kolmogorov-Smirnov p-value",
            size="half",
        ),
    ]


def run_window(settings: Settings, now: float | None = None, retrain=trigger_retrain) -> WindowResult:
    """Take the next window of the inference log, judge it, act. `retrain` is injectable for tests."""
    now = time.time() if now is None else now
    state_path, state = _state(settings)
    since = pd.Timestamp(state["last_end"]) if state.get("last_end") else None
    # The window's cost depends on the window, not on how much was logged before it (read_log).
    limit = settings.drift.window_records if settings.drift.window_records > 0 else None
    window = read_log(settings.inference_log_url, LOG_PREDICTIONS, since, limit)
    enough = len(window) == limit if limit else len(window) >= settings.drift.min_records
    info = {"since": str(since) if since is not None else None, "records": int(len(window))}
    if not enough:
        needed = settings.drift.window_records or settings.drift.min_records
        return WindowResult("waiting", info, [f"{len(window)} new records; a window needs {needed}"])
    info["until"] = str(window["timestamp"].max())
    version, reference = reference_for(settings, window)
    info["reference_version"] = version
    result = WindowResult("no_drift", info)
    failures = check_quality(window)
    if failures:
        result.outcome, result.quality_failures = "incident", failures
        result.reasons = ["data-quality incident (not drift): " + "; ".join(f["meaning"] for f in failures)]
    elif reference.empty:
        result.outcome, result.reasons = "no_reference", [f"no reference profile for version {version}"]
    else:
        metadata = {"reference_version": str(version), "records": str(len(window)), "until": info["until"]}
        # feedback comes after its prediction: the labels of this window's requests are after its start
        feedback = read_log(settings.inference_log_url, LOG_FEEDBACK, since)
        result.live_accuracy = live_accuracy(window, feedback)
        result.accuracy_estimate = estimated_accuracy(settings, window)
        reference, current = with_accuracy_columns(reference, window, feedback, result.accuracy_estimate)
        snapshot, result.drift = drift_report(reference, current, settings.drift.share, metadata)
        workspace, state["project_id"] = _workspace_project(settings, state)
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S")
        workspace.add_run(state["project_id"], snapshot, name=f"window until {info['until'][:19]} (v{version})")
        html = settings.home / "monitoring" / "drift" / f"drift-{stamp}.html"
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
        result.report_html = str(html)
        if result.drift["drift_share"] >= settings.drift.share:
            groups = {g: c for g, c in result.drift["drifted_by_group"].items() if c}
            result.outcome = "drift"
            result.reasons = [f"{result.drift['drift_share']:.0%} of the monitored columns drifted: {groups}"]
            last = state.get("last_retrain", 0.0)
            # Where the drift began (kept until a window without drift): the labelling queue
            # chooses from the live faces since then, refreshed at every drifted window.
            state.setdefault("drift_since", info["since"] or "")
            if settings.serving.keep_live_faces:
                # A retrain now would learn nothing new: the shifted faces have no labels yet. The
                # labelling queue asks for them (monitor_drift's next task); their batch, or any
                # new labelled batch, starts train_emotion_model through the curated-faces asset.
                result.retrain = {
                    "waits_for_labels": f"the labelling queue asks for MOODLOOP_LABEL_BUDGET="
                    f"{settings.drift.label_budget} labels; their landing batch starts the retrain"
                }
            elif now - last < settings.drift.cooldown_minutes * 60:
                result.retrain = {"suppressed": f"cool-down: drift started or joined a retrain {now - last:.0f} s ago"}
            else:
                conf = {"reason": "drift", "report": str(html), "drifted": groups, "window": info}
                result.retrain = retrain(settings, conf)
                state["last_retrain"] = now
    if result.outcome == "no_drift":
        state.pop("drift_since", None)
    info["drift_since"] = state.get("drift_since")
    _alert(settings, result)
    state["last_end"] = info["until"]
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=1))
    latest = {"outcome": result.outcome, "reasons": result.reasons, "window": info, "retrain": result.retrain}
    latest["drift_share"] = result.drift.get("drift_share")
    latest["accuracy_estimate"], latest["live_accuracy"] = result.accuracy_estimate, result.live_accuracy
    latest["report"] = status.DRIFT_REPORT if result.report_html else None  # this window's, or none
    report = {status.DRIFT_REPORT: result.report_html} if result.report_html else {}
    try:
        status.write_status(settings.status_dir, status.DRIFT, latest, report)
    except OSError as error:  # the page's panel misses a verdict; the drift decision stands
        log.error(f"could not record the drift verdict for the model panel: {error}")
    with (state_path.parent / "drift_decisions.jsonl").open("a") as fh:
        fh.write(json.dumps({"time": now, **result.as_dict()}, default=str) + "\n")
    return result


def _alert(settings: Settings, result: WindowResult) -> None:
    """A drift verdict or a data-quality incident posts one message (moodloop/core/alerts.py)."""
    ui = f"http://127.0.0.1:{settings.drift.evidently_port}"
    window = f"{result.window.get('records')} records until {result.window.get('until')}"
    if result.outcome == "drift":
        numbers = {
            "drifted share": f"{result.drift['drift_share']:.0%} (threshold {settings.drift.share:.0%})",
            "drifted": result.drift.get("drifted_by_group"),
            "window": window,
            "model version": result.window.get("reference_version"),
            "retrain": result.retrain,
            "report": result.report_html,
        }
        alerts.post(settings, alerts.DRIFT, "drift in the live inference log", numbers, ui)
    elif result.outcome == "incident":
        numbers = {"broken": "; ".join(f["meaning"] for f in result.quality_failures), "window": window}
        alerts.post(settings, alerts.QUALITY_INCIDENT, "data-quality incident in the inference log", numbers, ui)


def describe(result: WindowResult) -> str:
    lines = [f"drift monitor: {result.outcome.upper()} ({result.window.get('records', 0)} records)"]
    lines += [f"  - {r}" for r in result.reasons]
    for column, value in (result.drift.get("columns") or {}).items():
        flag = "DRIFT" if value["drifted"] else "ok"
        lines.append(f"    {column:<16} {value['method']}: {value['score']:.4g} {flag}")
    for version, found in result.accuracy_estimate.items():
        lines.append(f"  version {version}: {accuracy_estimate.describe(found, result.live_accuracy.get(version))}")
    if result.report_html:
        lines.append(f"  report: {result.report_html} (and the Evidently UI, project '{PROJECT}')")
    if result.retrain:
        lines.append(f"  retrain: {result.retrain}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run"], help="judge the next window of the inference log")
    parser.parse_args(argv)
    print(describe(run_window(Settings.from_env())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
