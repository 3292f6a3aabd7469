"""ingest_faces: one run per landing batch (started by watch_landing, or by hand with conf
{"batch": "<name>"}). Great Expectations checks the batch's data contract; an accepted batch
becomes the next curated span and updates the `curated_faces` asset (which schedules training);
a rejected batch moves whole to quarantine/<batch>/ with REPORT.md; a batch whose content was
ingested before is archived as a duplicate. Nothing is deleted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from moodloop.core import alerts
from moodloop.core.airflow_assets import CURATED_FACES
from moodloop.core.settings import Settings

log = logging.getLogger(__name__)


@dag(
    dag_id="ingest_faces",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # spans are numbered in order: one batch at a time
    params={"batch": Param("", type="string", description="batch name in the landing zone")},
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["moodloop", "ingest"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
)
def ingest_faces():
    @task
    def check_contract(params: dict | None = None) -> dict:
        from data import ingest

        if not params or not params.get("batch"):
            raise ValueError('trigger with conf {"batch": "<name of a folder or CSV in the landing zone>"}')
        return ingest.check(Settings.from_env(), params["batch"])

    @task.branch
    def route(checked: dict) -> str | None:
        return {"curate": "curate_span", "quarantine": "quarantine_batch", "duplicate": "skip_duplicate"}.get(
            checked["decision"]
        )

    @task(outlets=[CURATED_FACES])
    def curate_span(checked: dict) -> dict:
        from data import ingest

        outcome = ingest.curate(Settings.from_env(), checked)
        log.info(f"curated: {outcome}")
        if outcome["span"] is None:
            # Skipped, so no asset event: nothing new to train on.
            raise AirflowSkipException(f"every face of {checked['batch']} was curated before")
        return outcome

    @task
    def quarantine_batch(checked: dict) -> dict:
        from data import ingest

        return ingest.quarantine(Settings.from_env(), checked)

    @task
    def skip_duplicate(checked: dict) -> dict:
        from data import ingest

        return ingest.skip_duplicate(Settings.from_env(), checked)

    checked = check_contract()
    route(checked) >> [curate_span(checked), quarantine_batch(checked), skip_duplicate(checked)]


ingest_faces()
