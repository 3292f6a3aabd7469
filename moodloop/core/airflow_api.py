"""Airflow 3's REST API v2 through the official client (apache-airflow-client), as the retrain
trigger (the drift job), the local stack and the drift drill use it: a bearer token from
/auth/token, and retries when the api-server answers 5xx.

Why the retries: the local stack keeps Airflow's metadata in SQLite, which allows one writer; while
the scheduler and dag-processor write, the api-server can answer 500 ("database is locked" after
5 s) on a busy machine.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

RETRIED_STATUSES = (500, 502, 503, 504)


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a call raises while the api-server starts or is busy: the client's ApiException,
    urllib3's connection errors, and the token fetch's urllib errors (OSError)."""
    from airflow_client.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return ApiException, HTTPError, OSError


def fetch_token(base_url: str, user: str, password: str, timeout: float = 30) -> str:
    """A JWT for the REST API from Airflow 3's /auth/token (the client has no call for it)."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    for attempt in range(4):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["access_token"]
        except urllib.error.HTTPError as error:
            if error.code not in RETRIED_STATUSES or attempt == 3:
                raise
            time.sleep(2 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class Airflow:
    """The REST API v2's resources moodloop uses, each the official client's API class:
    `dag_runs` (DagRunApi), `dags` (DAGApi), `task_instances` (TaskInstanceApi), `monitor`
    (MonitorApi). Pass `timeout` to each call as `_request_timeout`."""

    dag_runs: Any
    dags: Any
    task_instances: Any
    monitor: Any
    timeout: float

    @classmethod
    def connect(cls, base_url: str, user: str | None = None, password: str | None = None, timeout: float = 30):
        """Authenticated as `user` when given (health checks need no token)."""
        from airflow_client.client import ApiClient, Configuration
        from airflow_client.client.api.dag_api import DAGApi
        from airflow_client.client.api.dag_run_api import DagRunApi
        from airflow_client.client.api.monitor_api import MonitorApi
        from airflow_client.client.api.task_instance_api import TaskInstanceApi
        from urllib3.util.retry import Retry

        token = fetch_token(base_url, user, password or "", timeout) if user else None
        retries = Retry(
            total=4, backoff_factor=2, status_forcelist=RETRIED_STATUSES, allowed_methods=None, raise_on_status=False
        )
        client = ApiClient(Configuration(host=base_url.rstrip("/"), access_token=token, retries=retries))
        return cls(DagRunApi(client), DAGApi(client), TaskInstanceApi(client), MonitorApi(client), timeout)
