"""Alerts: where people learn that something happened. Evidently's open-source UI has no alerts,
Airflow's failures sit in its UI; moodloop posts one message per event to a webhook
(`MOODLOOP_ALERT_WEBHOOK_URL`, Slack-compatible JSON: `text` for any receiver, `blocks` for
Slack, and a `moodloop` object with the event and its numbers for machines).

Events: a drift verdict, a data-quality incident in the inference log, a canary rollback (by the
analysis or by hand), a quarantined landing batch, a failed Airflow run. Posting never raises: an
unreachable webhook is logged, and the loop goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from moodloop.core.settings import Settings

log = logging.getLogger("moodloop.core.alerts")

DRIFT = "drift"
QUALITY_INCIDENT = "quality_incident"
ROLLBACK = "rollback"
QUARANTINE = "quarantine"
AIRFLOW_FAILURE = "airflow_run_failed"
ICONS = {DRIFT: "📉", QUALITY_INCIDENT: "🧪", ROLLBACK: "⏪", QUARANTINE: "🚧", AIRFLOW_FAILURE: "❌"}


def message(event: str, title: str, numbers: dict[str, Any], link: str | None = None) -> dict[str, Any]:
    """The webhook body: one line of text, the numbers, the link."""
    lines = [f"*{title}*", *(f"• {name}: {value}" for name, value in numbers.items())]
    if link:
        lines.append(f"<{link}|open>")
    text = f"{ICONS.get(event, '')} moodloop: {title}"
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}],
        "moodloop": {"event": event, "title": title, "numbers": numbers, "link": link, "time": time.time()},
    }


def post(settings: Settings, event: str, title: str, numbers: dict[str, Any], link: str | None = None) -> bool:
    """Post one alert; False (and a log line) when no webhook is set or it could not be reached."""
    url = settings.alerts.webhook_url
    if not url:
        return False
    body = json.dumps(message(event, title, numbers, link), default=str).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.alerts.timeout_seconds) as response:
            response.read()
        return True
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.error(f"alert '{title}' not delivered to the webhook: {error}")
        return False


def airflow_run_failed(context: dict[str, Any]) -> None:
    """A DAG's on_failure_callback: one message per failed run, with the failed tasks and a link."""
    settings = Settings.from_env()
    run = context.get("dag_run")
    dag_id = getattr(run, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    run_id = getattr(run, "run_id", "?")
    failed: list[str] = []
    # The alert goes out even when the run's tasks cannot be listed (no database in a callback).
    with contextlib.suppress(Exception):
        failed = [ti.task_id for ti in run.get_task_instances(state=["failed", "upstream_failed"])]
    base = settings.airflow.url or f"http://127.0.0.1:{settings.airflow.port}"
    numbers = {"dag": dag_id, "run": run_id, "failed tasks": ", ".join(failed) or "?"}
    if context.get("reason"):
        numbers["reason"] = context["reason"]
    post(settings, AIRFLOW_FAILURE, f"Airflow run of {dag_id} failed", numbers, f"{base}/dags/{dag_id}/runs/{run_id}")
