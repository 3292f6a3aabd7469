"""monitor_drift: every 10 minutes (MOODLOOP_DRIFT_EVERY_MINUTES), judge the newest window of the
inference log against the served model's reference profile: data quality (Great Expectations)
first, then Evidently drift reports (image properties, predictions, embeddings) into the
Evidently workspace and an HTML file, then triage. Drift triggers `train_emotion_model` (REST
API v2, conf {"reason": "drift", ...}) at most once per cool-down, or joins a retrain that new
data started; a data-quality incident is reported and retrains nothing. A drifted window also
fills the labelling queue (the faces page's Label tab) from the live faces kept since the drift
began, when they are kept (MOODLOOP_KEEP_LIVE_FACES): then drift does not trigger a retrain on
the labels it already has; the batch of answers (MOODLOOP_LABEL_BUDGET faces) starts it. Faces
kept longer than MOODLOOP_LIVE_FACES_DAYS are deleted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import dag, task

from moodloop.core import alerts
from moodloop.core.settings import Settings

log = logging.getLogger(__name__)


@dag(
    dag_id="monitor_drift",
    schedule=timedelta(minutes=Settings.from_env().drift.every_minutes),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # A monitor that fails once (the api-server busy, a restart) tries again instead of failing its run.
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
    tags=["moodloop", "monitoring", "drift"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
)
def monitor_drift():
    @task
    def judge_window() -> dict:
        from monitoring import drift

        result = drift.run_window(Settings.from_env())
        log.info(drift.describe(result))
        return {
            "outcome": result.outcome,
            "report": result.report_html,
            "retrain": result.retrain,
            "drift_since": result.window.get("drift_since"),
        }

    @task
    def queue_faces_to_label(judged: dict) -> dict:
        """A drifted window: the kept live faces worth labelling go to the Label tab's queue."""
        from monitoring import labelling

        settings = Settings.from_env()
        pruned = labelling.prune_live_faces(settings)
        if judged["outcome"] != "drift":
            return {"queued": 0, "why": f"the window's outcome is {judged['outcome']}", "pruned_hours": pruned}
        # every kept face since the drift began (None: since the log began)
        since = judged["drift_since"] or None
        queued = labelling.fill_queue(settings, since, reason=f"drift ({judged['report']})")
        log.info(f"labelling queue: {queued}")
        return queued | {"pruned_hours": pruned}

    queue_faces_to_label(judge_window())


monitor_drift()
