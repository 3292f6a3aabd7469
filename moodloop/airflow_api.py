"""A small client for Airflow 3's REST API v2, shared by the local stack, the drift job's retrain
trigger and the drift drill: a bearer token from /auth/token, JSON in and out, and a retry when
the api-server answers 5xx.

Why the retry: the local stack keeps Airflow's metadata in SQLite, which allows one writer; while
the scheduler and dag-processor write, the api-server can answer 500 ("database is locked" after
5 s) on a busy machine.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class AirflowApi:
    def __init__(self, base_url: str, user: str | None = None, password: str | None = None, timeout: float = 10):
        self.base_url, self.user, self.password, self.timeout = base_url.rstrip("/"), user, password, timeout
        self._token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        """The answer's JSON; authenticated (one token per client) when a user was given."""
        if self.user and self._token is None:
            credentials = {"username": self.user, "password": self.password}
            self._token = self._send("POST", "/auth/token", credentials, None)[1]["access_token"]
        return self._send(method, path, body, self._token)[1]

    def status(self, method: str, path: str) -> int:
        """The HTTP status alone, without authentication (health checks)."""
        return self._send(method, path, None, None)[0]

    def _send(self, method: str, path: str, body: dict | None, token: str | None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        for attempt in range(4):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, json.loads(response.read() or b"null")
            except urllib.error.HTTPError as error:
                if error.code < 500 or attempt == 3:
                    raise
                time.sleep(2 * (attempt + 1))
        raise AssertionError("unreachable")
