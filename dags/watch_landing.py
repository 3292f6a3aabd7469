"""watch_landing: every 30 s, start one `ingest_faces` run per new, ready batch in the landing zone.

The run id names the batch and its last change, and existing runs are skipped, so a batch is
ingested once however often it is seen; the same name landing again later gets a new run.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from moodloop.core import alerts
from moodloop.core.settings import Settings

log = logging.getLogger(__name__)


@dag(
    dag_id="watch_landing",
    schedule=timedelta(seconds=30),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["moodloop", "ingest"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
)
def watch_landing():
    @task
    def find_ready_batches() -> list[dict]:
        from data.landing_zone import landing_zone

        batches = [b for b in landing_zone(Settings.from_env()).list_batches() if b.ready]
        log.info(f"{len(batches)} ready batch(es): {', '.join(b.name for b in batches) or '-'}")
        return [
            {
                "trigger_run_id": f"ingest__{re.sub(r'[^A-Za-z0-9_.-]', '_', b.name)}__{int(b.modified)}",
                "conf": {"batch": b.name},
            }
            for b in batches
        ]

    TriggerDagRunOperator.partial(
        task_id="start_ingest", trigger_dag_id="ingest_faces", skip_when_already_exists=True
    ).expand_kwargs(find_ready_batches())


watch_landing()
