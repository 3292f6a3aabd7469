"""canary_analysis: every 5 minutes (MOODLOOP_CANARY_EVERY_MINUTES) and when the Pusher ends (the
`pushed_models` asset), judge the live canary against stable on the inference log, then wait, ramp
its traffic share (10 % -> 50 % -> 100 %), promote it, or roll it back.

Runs monitoring/canary.py in the pipeline env (it reads TF Serving's models.config). Each run's
log shows the decision and its numbers; all decisions are in <home>/serving/canary_decisions.jsonl.
Thresholds: MOODLOOP_CANARY_* (steps, bake seconds, least requests and labels, alpha).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, AssetOrTimeSchedule, DeltaTriggerTimetable

from moodloop.core import alerts, warm_python
from moodloop.core.airflow_assets import PUSHED_MODELS
from moodloop.core.settings import REPO_ROOT, Settings

SETTINGS = Settings.from_env()
PYTHON = SETTINGS.pipeline_python
# Each task runs `python -m MODULE` through the stack's warm Python when it runs (no TensorFlow
# import of its own), else in its own process as before: moodloop/core/warm_python.py
WARM = warm_python.MODULE

with DAG(
    dag_id="canary_analysis",
    # its period, and at once when the Pusher ends (a new canary's first step starts then)
    schedule=AssetOrTimeSchedule(
        timetable=DeltaTriggerTimetable(timedelta(minutes=SETTINGS.canary.every_minutes)), assets=[PUSHED_MODELS]
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # A monitor that fails once (the api-server busy, a restart) tries again instead of failing its run.
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
    tags=["moodloop", "serving", "canary"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
) as dag:
    BashOperator(
        task_id="analyze_canary",
        bash_command=f'"{PYTHON}" -m {WARM} monitoring.canary analyze',
        cwd=str(REPO_ROOT),
    )
