"""serving_control: promote the canary or roll it back by hand (Trigger with a conf).

  {"action": "promote"}    stable moves to the canary's version; the canary label is dropped
  {"action": "rollback"}   the canary label is dropped; stable serves all traffic

Same as `moodloop promote` / `moodloop rollback`: models.config is rewritten atomically, and
TF Serving and the gateway pick it up by themselves.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from moodloop.core import alerts
from moodloop.core.settings import REPO_ROOT, Settings

PYTHON = Settings.from_env().pipeline_python

with DAG(
    dag_id="serving_control",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"action": Param("rollback", type="string", enum=["promote", "rollback"], description="what to do")},
    tags=["moodloop", "serving", "canary"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
) as dag:
    BashOperator(
        task_id="move_labels",
        bash_command=f'"{PYTHON}" -m moodloop.cli "$ACTION" && "{PYTHON}" -m moodloop.cli models',
        env={"ACTION": "{{ params.action }}"},
        append_env=True,
        cwd=str(REPO_ROOT),
    )
