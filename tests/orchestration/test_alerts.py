"""Alerts reach a Slack-compatible webhook (a local receiver here): a quarantined batch and a
failed Airflow run (every DAG's on_failure_callback); drift and data-quality incidents are checked
in test_drift.py, a rollback in tests/serving/test_canary.py. An unreachable webhook never stops
the loop."""

from __future__ import annotations

import time
from types import SimpleNamespace

from data import landing, synthetic
from moodloop.core import alerts
from moodloop.core.settings import Settings


def test_a_quarantined_batch_posts_its_numbers(moodloop_home, webhook):
    from data.ingest import ingest

    url, received = webhook
    settings = Settings.from_env(alerts={"webhook_url": url})
    pixels, labels = synthetic.generate_arrays(10, seed=4)
    labels[3] = 11  # not an emotion: the contract quarantines the batch whole
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), settings.landing_dir / "bad-7" / "fer2013.csv")
    assert ingest(settings, "bad-7")["decision"] == "quarantine"
    (message,) = received
    assert message["moodloop"]["event"] == "quarantine" and "bad-7" in message["text"]
    numbers = message["moodloop"]["numbers"]
    assert numbers["rules broken"] == 1 and numbers["items"] == 10 and numbers["usable faces"] == 9
    assert numbers["report"].endswith("quarantine/bad-7/REPORT.md")
    assert "*landing batch bad-7 quarantined*" in message["blocks"][0]["text"]["text"]  # Slack's mrkdwn


def test_every_dag_alerts_on_a_failed_run_with_a_link_to_it(dagbag, moodloop_home, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("MOODLOOP_ALERT_WEBHOOK_URL", url)
    assert dagbag.dags and all(dag.on_failure_callback is alerts.airflow_run_failed for dag in dagbag.dags.values())
    failed_task = SimpleNamespace(task_id="check_contract")
    run = SimpleNamespace(
        dag_id="ingest_faces", run_id="manual__2026-12-01", get_task_instances=lambda state: [failed_task]
    )
    alerts.airflow_run_failed({"dag_run": run, "reason": "task_failure"})
    (message,) = received
    assert message["moodloop"]["event"] == "airflow_run_failed"
    assert message["moodloop"]["numbers"]["failed tasks"] == "check_contract"
    assert message["moodloop"]["link"].endswith("/dags/ingest_faces/runs/manual__2026-12-01")


def test_an_unreachable_webhook_is_logged_and_the_loop_goes_on(moodloop_home, caplog):
    settings = Settings.from_env(alerts={"webhook_url": "http://127.0.0.1:9/nothing-listens", "timeout_seconds": 1})
    started = time.monotonic()
    assert alerts.post(settings, alerts.DRIFT, "drift", {"share": 0.5}) is False
    assert time.monotonic() - started < 5
    assert "not delivered to the webhook" in caplog.text
    assert alerts.post(Settings.from_env(), alerts.DRIFT, "drift", {}) is False  # no webhook set: nothing sent
