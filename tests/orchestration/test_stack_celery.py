"""The local stack on Celery (MOODLOOP_EXECUTOR=celery): Debian's redis-server as the broker and
two real Celery workers on 127.0.0.1. The loop trains to a pushed model with the run's tasks spread
over both workers (told apart by the host name Airflow records for each task instance), and
`stop` leaves no process behind, Redis and the workers included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from moodloop.local.stack import stack_processes
from moodloop.settings import Settings
from tests.orchestration.test_stack import FAST, Api, _ports

pytestmark = pytest.mark.pipeline


def test_training_runs_on_two_celery_workers_and_pushes_a_model(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server missing: sudo apt-get install redis-server (make setup does it as root)")
    env = {**os.environ, **FAST, "MOODLOOP_HOME": str(tmp_path / "home"), "MOODLOOP_EXECUTOR": "celery", **_ports()}
    command = [sys.executable, "-m", "moodloop.local.stack"]
    settings = Settings.from_env(home=env["MOODLOOP_HOME"])
    started = subprocess.run([*command, "start", "--faces", "2000"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Celery: 2 workers" in started.stdout
        password = started.stdout.split("password ", 1)[1].split()[0]
        api = Api(int(env["MOODLOOP_AIRFLOW_PORT"]), password)
        succeeded = lambda runs: any(r["state"] == "success" for r in runs)  # noqa: E731
        api.wait_for("train_emotion_model", succeeded, 1200, "the asset-triggered training on Celery")
        run = next(r for r in api.runs("train_emotion_model") if r["state"] == "success")
        tasks = api.airflow.task_instances.get_task_instances(
            "train_emotion_model", run["dag_run_id"], _request_timeout=30
        ).task_instances
        ran = [t for t in tasks if t.state == "success"]
        workers = Counter((t.hostname or "").split("@")[0] for t in ran)
        print(f"train_emotion_model {run['dag_run_id']}: tasks per worker {dict(workers)}")
        assert set(workers) == {"worker-1", "worker-2"}, {t.task_id: t.hostname for t in ran}
        assert [p.name for p in settings.model_base.iterdir() if p.name.isdigit()], "no version pushed"
    finally:
        stopped = subprocess.run([*command, "stop"], env=env, capture_output=True, text=True)
        print(stopped.stdout, stopped.stderr)
    assert stopped.returncode == 0 and not stack_processes(settings)
