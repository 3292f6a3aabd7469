"""The host name Airflow records for a task instance (`[core] hostname_callable`): the Celery
worker's name before the machine's, so two workers on one machine are told apart in the UI and in
the API's task instances (`worker-1@host`). Without a worker name: the machine's name, as Airflow's
default."""

from __future__ import annotations

import socket

from moodloop.core.settings import Settings


def hostname() -> str:
    name = Settings.from_env().airflow.worker_name
    return f"{name}@{socket.getfqdn()}" if name else socket.getfqdn()
