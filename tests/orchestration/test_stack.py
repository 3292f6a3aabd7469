"""The local stack as a user meets it, in one stack start: `python -m moodloop.local.stack start`
in the production profile (PostgreSQL for Airflow, Celery's results and ML Metadata; Celery on
Debian's redis-server with two workers; the gateway over two serving replicas) brings Airflow 3
up, the loop runs by itself (watch -> ingest -> train -> push) with the run's tasks spread over
both workers, one task per TFX component, and a finished component run again is skipped; PostgreSQL
stopped and started mid-fit fails no run. Tables
and rows are in PostgreSQL, no SQLite file is written, requests reach both replicas, and one
replica killed under load fails no request. The REST API v2 needs a token and triggers training;
the Celery worker running its Trainer is killed mid-fit (the try is retried), then the scheduler
and the Trainer, and the stack (PostgreSQL with it) is started again on the LocalExecutor; the
run ends cleanly. A bad and a good batch dropped together
end in quarantine and curated, the UI (headless Chromium) shows the runs, the drift monitor's
report opens in the Evidently UI, and `stop` leaves no process and no listening port behind.
`make run`'s default (SQLite, LocalExecutor, embedded backend) has a start of its own."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

from data import landing, synthetic
from moodloop.core.airflow_api import Airflow
from moodloop.core.settings import Settings
from moodloop.local.s3server import free_port
from moodloop.local.stack import PORT_VARIABLES, replica_ports, stack_processes
from tests.browser import artifact, chromium
from tests.conftest import WIRING

pytestmark = pytest.mark.pipeline

# The stack's wiring is the subject: quick training and a floor the model cannot miss.
FAST = {**WIRING, "MOODLOOP_LANDING_SETTLE_SECONDS": "2"}


class Api:
    """The stack's REST API v2 through moodloop's client (the official apache-airflow-client)."""

    def __init__(self, port: int, password: str):
        self.airflow = Airflow.connect(f"http://127.0.0.1:{port}", "admin", password)

    def runs(self, dag_id: str) -> list[dict]:
        return [r.to_dict() for r in self.airflow.dag_runs.get_dag_runs(dag_id, limit=50, _request_timeout=30).dag_runs]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tasks = self.airflow.task_instances.get_task_instances(dag_id, run_id, _request_timeout=30).task_instances
        return {t.task_id: t.state for t in tasks}

    def task(self, dag_id: str, run_id: str, task_id: str):
        return self.airflow.task_instances.get_task_instance(dag_id, run_id, task_id, _request_timeout=30)

    def trigger(self, dag_id: str, conf: dict) -> str:
        body = TriggerDAGRunPostBody(logical_date=None, conf=conf)
        return self.airflow.dag_runs.trigger_dag_run(dag_id, body, _request_timeout=30).dag_run_id

    def wait_for(self, dag_id: str, predicate, timeout: float, what: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs(dag_id)
            if predicate(runs):
                return runs
            failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
            assert not failed, f"{dag_id} runs failed: {failed}"
            time.sleep(5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {self.runs(dag_id)}")


def _ports() -> dict[str, str]:
    return {name: str(free_port()) for name in PORT_VARIABLES}


# The loop's stack starts in the production profile (MOODLOOP_PROFILE=production): PostgreSQL for
# Airflow, Celery's results and ML Metadata, Celery on Debian's redis-server with two workers, the
# gateway over two serving replicas. One stack start serves the loop's checks, the production
# shape's and the kill test's; after the kill the stack starts again on the LocalExecutor (its
# PostgreSQL stopped and started with it). `make run`'s default (SQLite) has a start of its own below.
CELERY = shutil.which("redis-server") is not None
POSTGRES = CELERY and any(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


def _stopped_clean(command: list[str], env: dict) -> None:
    stopped = subprocess.run([*command, "stop"], env=env, capture_output=True, text=True)
    print(stopped.stdout, stopped.stderr)
    status = subprocess.run([*command, "status"], env=env, capture_output=True, text=True)
    assert "0 process(es) running" in status.stdout, status.stdout
    assert stopped.returncode == 0, stopped.stdout
    # Redis, PostgreSQL, the Celery workers and the replicas too: nothing of the stack is left.
    settings = Settings.from_env(fallback=env, home=env["MOODLOOP_HOME"])
    assert not stack_processes(settings)
    # every port the stack listened on, the second replica's (MOODLOOP_REPLICA_PORT + 1) included
    for port in {*(int(v) for k, v in env.items() if k in PORT_VARIABLES), *replica_ports(settings)}:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still listening"


@pytest.fixture
def stack(tmp_path):
    shape = {"MOODLOOP_EXECUTOR": "celery"} if CELERY else {}
    if POSTGRES:
        # As root PostgreSQL runs as the postgres user, which cannot enter pytest's 0700 folders.
        folder = Path(tempfile.mkdtemp(prefix="moodloop-postgres-"))
        folder.chmod(0o755)
        shape = {"MOODLOOP_PROFILE": "production", "MOODLOOP_POSTGRES_DIR": str(folder / "cluster")}
    else:
        print("redis-server or PostgreSQL missing (make setup installs them as root): not the production profile")
    env = {**os.environ, **FAST, "MOODLOOP_HOME": str(tmp_path / "home"), **shape, **_ports()}
    command = [sys.executable, "-m", "moodloop.local.stack"]
    started = subprocess.run([*command, "start", "--faces", "2000"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, started.stdout
    finally:
        _stopped_clean(command, env)
        if POSTGRES:
            shutil.rmtree(folder, ignore_errors=True)


def _check_one_task_per_component(api: Api, env: dict, settings: Settings, run_id: str) -> None:
    """The scheduler ran every TFX component as its own task, and a finished component run again
    is skipped (one stack run serves these checks; they had a dag.test() run of their own)."""
    states = api.task_states("train_emotion_model", run_id)
    assert set(states) >= {"compile_pipeline", "ImportExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"}
    assert set(states.values()) == {"success"}, states
    versions = [p.name for p in settings.model_base.iterdir() if p.name.isdigit()]
    assert len(versions) == 1 and (settings.model_base / versions[0] / "saved_model.pb").exists()
    assert (settings.model_base / versions[0] / "assets.extra" / "edge" / "edge.json").exists()  # EdgeExporter
    (energy_file,) = (settings.pipeline_root / "energy").glob("*/Trainer.json")
    energy = json.loads(energy_file.read_text())
    assert energy["joules"] > 0 and energy["method"]  # each task measures its component (components/energy.py)
    # A cleared task of a finished run re-runs its component's process, which finds the execution
    # COMPLETE in ML Metadata and skips it: nothing is redone, nothing is re-pushed.
    node = [str(settings.pipeline_python), "-m", "components.node_runner", "run", "--run-id", run_id, "--node"]
    rerun = subprocess.run([*node, "Pusher"], env=env, capture_output=True, text=True, check=True)
    assert "already completed" in rerun.stdout
    assert [p.name for p in settings.model_base.iterdir() if p.name.isdigit()] == versions


def _check_tasks_ran_on_both_celery_workers(api: Api, run_id: str) -> None:
    """Each task instance names the Celery worker that ran it (moodloop.local.worker_hostname)."""
    tasks = api.airflow.task_instances.get_task_instances(
        "train_emotion_model", run_id, _request_timeout=30
    ).task_instances
    ran = [t for t in tasks if t.state == "success"]
    workers = Counter((t.hostname or "").split("@")[0] for t in ran)
    print(f"train_emotion_model {run_id}: tasks per worker {dict(workers)}")
    assert set(workers) == {"worker-1", "worker-2"}, {t.task_id: t.hostname for t in ran}


def test_the_loop_runs_by_itself_and_answers_rest_and_the_ui(stack, tmp_path):
    env, output = stack
    port = int(env["MOODLOOP_AIRFLOW_PORT"])
    password = output.split("password ", 1)[1].split()[0]
    settings = Settings.from_env(home=env["MOODLOOP_HOME"])

    with pytest.raises(ApiException) as refused:  # no token
        Airflow.connect(f"http://127.0.0.1:{port}").dags.get_dags(_request_timeout=30)
    assert refused.value.status == 401

    api = Api(port, password)
    succeeded = lambda runs: any(r["state"] == "success" for r in runs)  # noqa: E731
    api.wait_for("ingest_faces", succeeded, 300, "the first batch to be ingested")
    if POSTGRES:
        _restart_postgres_mid_fit(api, env, settings)
    api.wait_for("train_emotion_model", succeeded, 900, "the asset-triggered training")
    pushed = [int(p.name) for p in settings.model_base.iterdir() if p.name.isdigit()]
    assert pushed, "no version pushed"
    _check_gateway_serves(int(env["MOODLOOP_REST_PORT"]), max(pushed))
    first = api.runs("train_emotion_model")[0]
    assert first["run_type"] == "asset_triggered"
    _check_one_task_per_component(api, env, settings, first["dag_run_id"])
    if CELERY:
        assert "Celery: 2 workers" in output
        _check_tasks_ran_on_both_celery_workers(api, first["dag_run_id"])
    if POSTGRES:
        _check_production_shape(env, settings)

    # The drift job's trigger against the real REST API v2: a run with its conf, then, while that
    # run is queued or running, a second drift joins it instead of queueing another.
    from monitoring import drift

    airflow = dataclasses.replace(
        settings, airflow=dataclasses.replace(settings.airflow, url=f"http://127.0.0.1:{port}")
    )
    # 60 epochs, every one of them: the Trainer is still fitting when it is killed below.
    conf = {"reason": "drift", "report": "r.html", "epochs": 60, "early_stop_patience": 0}
    triggered = drift.trigger_retrain(airflow, conf)
    run_id = triggered["dag_run_id"]
    assert drift.trigger_retrain(airflow, {"reason": "drift"})["already_running"] == run_id
    conf = api.airflow.dag_runs.get_dag_run("train_emotion_model", run_id, _request_timeout=30).conf
    assert conf["reason"] == "drift" and conf["epochs"] == 60

    # That run's scheduler and Trainer killed mid-fit, the stack stopped and started again, on
    # `make run`'s default executor (LocalExecutor) this time: the run ends completed or cleanly
    # failed, never with a partial version. (One stack start serves this too: it had its own.)
    env, pushed = _kill_mid_training_and_restart(api, env, settings, run_id, before=pushed)
    api = Api(port, password)
    ledger = [json.loads(line) for line in (settings.ingest_dir / "ledger.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in ledger] == ["curated"]  # the first batch once, restart or not

    # A bad and a good batch dropped at the same moment. Training is paused first: the good batch
    # updates the curated asset, and the training it would start is not what this part checks (it
    # took the 2 cores from the rest of the suite until the stack stopped).
    from airflow_client.client.models.dag_patch_body import DAGPatchBody

    api.airflow.dags.patch_dag("train_emotion_model", DAGPatchBody(is_paused=True), _request_timeout=30)
    for name, seed in (("bad-batch", 7), ("good-batch", 8)):
        pixels, labels = synthetic.generate_arrays(60, seed=seed)
        staging = settings.landing_dir / f".{name}"
        landing.write_image_folders(zip(pixels, labels, strict=True), staging)
        if name == "bad-batch":
            (staging / "train" / "happy" / "corrupt.png").write_bytes(b"not a png")
            (staging / "train" / "elated").mkdir()
            shutil.copy(staging / "train" / "happy" / "corrupt.png", staging / "train" / "elated" / "x.png")
        (staging / "_SUCCESS").touch()
    for name in ("bad-batch", "good-batch"):
        os.replace(settings.landing_dir / f".{name}", settings.landing_dir / name)
    api.wait_for(
        "ingest_faces",
        lambda runs: sum(r["state"] == "success" for r in runs) >= 3,
        300,
        "both new batches to be ingested",
    )
    report = (settings.quarantine_dir / "bad-batch" / "REPORT.md").read_text()
    assert "QUARANTINED" in report and "train/happy/corrupt.png" in report and "elated" in report
    assert (settings.archive_dir / "good-batch" / "data").is_dir()
    assert len(list(settings.curated_dir.glob("span-*"))) == 2

    _check_ui(port, password, artifact("stack", "airflow-ui.png"))

    # Live traffic, then the drift monitor (triggered now rather than waiting for its schedule):
    # its report must open in the Evidently UI of the stack.
    pixels, _ = synthetic.generate_arrays(250, seed=123)
    body = json.dumps({"signature_name": "serving_pixels", "inputs": {"pixels": pixels.tolist()}}).encode()
    gateway = f"http://127.0.0.1:{env['MOODLOOP_REST_PORT']}/v1/models/emotion:predict"
    sent_at = time.time()
    with urllib.request.urlopen(urllib.request.Request(gateway, data=body), timeout=60) as response:
        assert response.status == 200
    _wait_until_logged(settings, since=sent_at - 1, rows=len(pixels))
    run_id = api.trigger("monitor_drift", {})
    api.wait_for(
        "monitor_drift",
        lambda runs: any(r["dag_run_id"] == run_id and r["state"] == "success" for r in runs),
        300,
        "the drift monitor",
    )
    _check_evidently_ui(int(env["MOODLOOP_EVIDENTLY_PORT"]), artifact("stack", "evidently-ui.png"))


def test_make_run_default_comes_up_on_sqlite_and_stops_clean(tmp_path):
    """`make run`'s default profile (the loop's test above runs the production one): Airflow on a
    SQLite file in write-ahead-logging mode, the LocalExecutor, the gateway on its embedded backend;
    a scheduled run succeeds, and `stop` leaves no process and no listening port."""
    env = {k: v for k, v in os.environ.items() if k not in ("MOODLOOP_PROFILE", "MOODLOOP_EXECUTOR")}
    env = {**env, **FAST, "MOODLOOP_HOME": str(tmp_path / "home"), **_ports()}
    command = [sys.executable, "-m", "moodloop.local.stack"]
    started = subprocess.run([*command, "start", "--faces", "0"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "profile embedded: Airflow's metadata DB is SQLite" in started.stdout
        assert "embedded backend" in started.stdout and "Celery" not in started.stdout
        password = started.stdout.split("password ", 1)[1].split()[0]
        api = Api(int(env["MOODLOOP_AIRFLOW_PORT"]), password)
        api.wait_for("watch_landing", lambda runs: any(r["state"] == "success" for r in runs), 180, "a watch run")
        database = tmp_path / "home" / "airflow" / "airflow.db"
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        shown = subprocess.run([*command, "status"], env=env, check=True, capture_output=True, text=True).stdout
        assert "(profile embedded)" in shown and "PostgreSQL" not in shown and "replica" not in shown, shown
    finally:
        _stopped_clean(command, env)


def _wait_until_logged(settings: Settings, since: float, rows: int, timeout: float = 120) -> None:
    """Until the gateway's inference log holds `rows` predictions since `since` (it flushes on a
    period, later on a loaded machine), so the drift job judges them all."""
    from moodloop.core.log_records import read_log

    deadline = time.monotonic() + timeout
    while (logged := read_log(settings.inference_log_url, since=since).num_rows) < rows:
        assert time.monotonic() < deadline, f"{logged} of {rows} predictions in the inference log after {timeout} s"
        time.sleep(0.5)


def _trainer_processes() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "node_runner run .*--node Trainer"], capture_output=True, text=True)
    assert found.stdout.split(), "no Trainer process to kill"
    return [int(pid) for pid in found.stdout.split()]


def _wait_mid_fit(api: Api, settings: Settings, run_id: str, attempt: int, deadline: float) -> None:
    """Until the Trainer's try `attempt` runs and its task log shows its second epoch (Keras prints
    one line per epoch)."""
    while api.task_states("train_emotion_model", run_id).get("Trainer") != "running":
        assert time.monotonic() < deadline, f"Trainer try {attempt} never started"
        time.sleep(3)
    run_logs = settings.home / "airflow" / "logs" / "dag_id=train_emotion_model" / f"run_id={run_id}"
    log = run_logs / "task_id=Trainer" / f"attempt={attempt}.log"
    while not (log.exists() and "Epoch 2/" in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"the Trainer's try {attempt} never reached its second epoch ({log})"
        time.sleep(0.5)


def _query(env: dict, settings: Settings, database: str, sql: str):
    """One row from the stack's PostgreSQL (its port is the test's, in `env`)."""
    password = json.loads((settings.home / "stack" / "secrets.json").read_text())["postgres_password"]
    port = env["MOODLOOP_POSTGRES_PORT"]
    connection = psycopg2.connect(
        host="127.0.0.1", port=port, user="moodloop", password=password, dbname=database, connect_timeout=5
    )
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        connection.close()


def _restart_postgres_mid_fit(api: Api, env: dict, settings: Settings) -> None:
    """PostgreSQL stopped (its fast shutdown: every session ended) while the first run's Trainer
    fits, and started again by the supervisor. The run must still succeed (wait_for fails on any
    failed run): the scheduler exits on the lost connection and is restarted, the api-server's pool
    reconnects, and ML Metadata is opened per step (a TFX node connects to register its execution
    and again to publish it, not across the fit), so the Trainer publishes to the new server."""
    deadline = time.monotonic() + 600
    while not (runs := api.runs("train_emotion_model")):
        assert time.monotonic() < deadline, "no training run started"
        time.sleep(3)
    _wait_mid_fit(api, settings, runs[0]["dag_run_id"], attempt=1, deadline=deadline)
    services = settings.home / "stack" / "services.json"
    stopped = json.loads(services.read_text())["postgres"]
    os.killpg(stopped["pid"], signal.SIGINT)
    while True:
        now = json.loads(services.read_text())
        with contextlib.suppress(psycopg2.OperationalError):
            if now["postgres"]["pid"] != stopped["pid"]:
                _query(env, settings, "postgres", "SELECT 1")
                break
        assert time.monotonic() < deadline, f"PostgreSQL was not started again: {now['postgres']}"
        time.sleep(0.5)
    while True:  # the api-server answers again (it may answer 500 while its pool reconnects)
        try:
            api.runs("train_emotion_model")
            break
        except ApiException:
            assert time.monotonic() < deadline, "the api-server did not recover from the restart"
            time.sleep(2)
    restarted = {name: s["restarts"] for name, s in now.items() if s["restarts"]}
    print(f"PostgreSQL stopped and started mid-fit of {runs[0]['dag_run_id']}; restarts so far: {restarted}")


def _kill_the_worker_mid_fit(api: Api, settings: Settings, run_id: str, deadline: float) -> None:
    """SIGKILL the Celery worker whose task runs the Trainer, and the Trainer's process: its
    heartbeat stops, the scheduler fails that try and retries it (retries=1) on a worker."""
    trainer = api.task("train_emotion_model", run_id, "Trainer")
    worker = (trainer.hostname or "").split("@")[0]
    pid = json.loads((settings.home / "stack" / "services.json").read_text())[worker]["pid"]
    os.killpg(pid, 9)
    for process in _trainer_processes():
        os.kill(process, 9)
    while True:
        trainer = api.task("train_emotion_model", run_id, "Trainer")
        if trainer.try_number >= 2 and trainer.state == "running":
            break
        assert trainer.state != "failed" or trainer.try_number >= 2, f"the killed try was not retried: {trainer}"
        assert time.monotonic() < deadline, f"the Trainer was not retried after {worker} was killed: {trainer}"
        time.sleep(3)
    print(f"Trainer of {run_id}: {worker} killed mid-fit, try {trainer.try_number} runs on {trainer.hostname}")


def _kill_mid_training_and_restart(
    api: Api, env: dict, settings: Settings, run_id: str, before: list[int]
) -> tuple[dict, list[int]]:
    """On Celery, SIGKILL the worker running `run_id`'s Trainer mid-fit: the try is failed and
    retried. Then SIGKILL the scheduler and the running Trainer, `stop` (PostgreSQL too, in the
    production profile), `start` again with the LocalExecutor, and wait for the run to end.
    -> (the restarted stack's env, pushed versions)."""
    deadline = time.monotonic() + 900
    _wait_mid_fit(api, settings, run_id, attempt=1, deadline=deadline)
    if CELERY:
        _kill_the_worker_mid_fit(api, settings, run_id, deadline)
        _wait_mid_fit(api, settings, run_id, attempt=2, deadline=deadline)
    command = [sys.executable, "-m", "moodloop.local.stack"]
    services = settings.home / "stack" / "services.json"
    scheduler = json.loads(services.read_text())["scheduler"]["pid"]
    for pid in [scheduler, *_trainer_processes()]:
        os.kill(pid, 9)
    # The supervisor starts the killed scheduler again (after 1 s) and `status` counts it.
    restarted = lambda: json.loads(services.read_text())["scheduler"]  # noqa: E731
    while restarted()["state"] != "running" or restarted()["pid"] == scheduler:
        assert time.monotonic() < deadline, f"the scheduler was not started again: {restarted()}"
        time.sleep(0.5)
    shown = subprocess.run([*command, "status"], env=env, check=True, capture_output=True, text=True).stdout
    # (its latest exit is the kill; counted with the others: the PostgreSQL restart's exit 1 in the
    # production profile, or a restarted scheduler that died again)
    assert re.search(r"scheduler +pid \d+ +running  restarts [1-9] \(exit codes [-\d, ]*-9\)", shown), shown
    subprocess.run([*command, "stop"], env=env, check=True, capture_output=True)
    versions = lambda: sorted(int(p.name) for p in settings.model_base.iterdir() if p.name.isdigit())  # noqa: E731
    assert versions() == sorted(before), "pushed before training ended"

    env = {**env, "MOODLOOP_EXECUTOR": "local"}  # make run's executor (on the same databases)
    restarted = subprocess.run([*command, "start", "--faces", "0"], env=env, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "executor     Celery" not in restarted.stdout
    deadline = time.monotonic() + 900
    while (state := next(r["state"] for r in api.runs("train_emotion_model") if r["dag_run_id"] == run_id)) not in (
        "success",
        "failed",
    ):
        assert time.monotonic() < deadline, f"run still {state}"
        time.sleep(5)
    # Either outcome is clean: a complete version or none, never a partial one. (A run that
    # succeeds may push nothing: the candidate, trained on the champion's own faces, need not beat
    # it beyond chance at the A/B gate.)
    assert not [p for p in settings.model_base.glob(".*")], "staging folder left in the model base path"
    after = versions()
    print(f"killed run {run_id} ended {state} after the restart; versions {before} -> {after}")
    new = set(after) - set(before)
    assert set(before) <= set(after) and len(new) <= (1 if state == "success" else 0), (before, after)
    for version in new:
        assert (settings.model_base / str(version) / "saved_model.pb").exists()
    return env, after


def _check_production_shape(env: dict, settings: Settings) -> None:
    """Airflow's and ML Metadata's tables are in the stack's PostgreSQL (no SQLite file anywhere
    under the home), the first run's tasks and executions are rows there, and the gateway spread
    the requests over both replicas; `status` shows all of it."""
    assert not list(settings.home.rglob("*.db")) and not list(settings.home.rglob("*.sqlite")), "a SQLite file"
    rows = {}
    for database, table in (("airflow", "task_instance"), ("mlmd", "execution")):
        rows[database] = _query(env, settings, database, f"SELECT count(*) FROM {table}")[0]
    assert rows["airflow"] > 10 and rows["mlmd"] >= 6, rows  # every TFX component's execution
    base = f"http://127.0.0.1:{env['MOODLOOP_REST_PORT']}"
    pixels, _ = synthetic.generate_arrays(2, seed=5)
    body = json.dumps({"signature_name": "serving_pixels", "instances": pixels.tolist()}).encode()
    # Until each replica took 5 calls (a replica briefly out of rotation on a loaded machine takes
    # none meanwhile), 200 requests at most.
    for _ in range(200):
        with urllib.request.urlopen(urllib.request.Request(base + "/v1/models/emotion:predict", data=body), timeout=30):
            pass
        with urllib.request.urlopen(base + "/healthz", timeout=10) as response:
            replicas = json.loads(response.read())["replicas"]
        if all(r["calls"] >= 5 for r in replicas):
            break
    assert len(replicas) == 2 and all(r["healthy"] and r["calls"] >= 5 for r in replicas), replicas
    command = [sys.executable, "-m", "moodloop.local.stack", "status"]
    shown = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    assert "(profile production)" in shown and re.search(r"PostgreSQL .* airflow \d+ tables, mlmd \d+ tables", shown)
    for service in ("postgres", "redis", "worker-1", "worker-2", "replica-1", "replica-2"):
        assert re.search(rf"^  {service} +pid \d+ +running", shown, re.MULTILINE), shown
    assert shown.count("healthy,") == 2, shown
    _kill_a_replica_under_load(base + "/v1/models/emotion:predict", body, settings)


def _kill_a_replica_under_load(url: str, body: bytes, settings: Settings) -> None:
    """Clients send without pause while replica-1 is killed (SIGKILL) and started again by the
    supervisor: no request fails (the gateway retries an UNAVAILABLE call on the other replica)."""
    import threading

    outcomes: list[int | str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
                    outcomes.append(response.status)
            except (urllib.error.URLError, OSError) as error:
                outcomes.append(str(error))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    replica = json.loads((settings.home / "stack" / "services.json").read_text())["replica-1"]["pid"]
    os.killpg(replica, 9)
    time.sleep(3.0)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    failed = [o for o in outcomes if o != 200]
    print(f"replica-1 killed under load: {len(outcomes)} requests, {len(failed)} failed")
    assert len(outcomes) > 10 and not failed, failed[:5]


def _check_gateway_serves(rest_port: int, version: int) -> None:
    """The stack's gateway picks up the pushed version by itself and answers TF Serving's REST API."""
    base = f"http://127.0.0.1:{rest_port}/v1/models/emotion"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base, timeout=10) as response:
                states = json.loads(response.read())["model_version_status"]
            if {"version": str(version), "state": "AVAILABLE"}.items() <= states[0].items():
                break
        except urllib.error.URLError:
            pass
        assert time.monotonic() < deadline, f"the gateway does not serve version {version}"
        time.sleep(2)
    pixels, _ = synthetic.generate_arrays(4, seed=99)
    body = json.dumps({"signature_name": "serving_pixels", "instances": pixels.tolist()}).encode()
    with urllib.request.urlopen(urllib.request.Request(base + ":predict", data=body), timeout=30) as response:
        predictions = json.loads(response.read())["predictions"]
    assert len(predictions) == 4 and all(len(p["probabilities"]) == 7 for p in predictions)


def _check_ui(port: int, password: str, screenshot: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        page.locator("input[name=username]").fill("admin")
        page.locator("input[type=password]").fill(password)
        page.locator("button[type=submit]").click()
        page.wait_for_url(f"http://127.0.0.1:{port}/", timeout=30_000)
        page.goto(f"http://127.0.0.1:{port}/dags/train_emotion_model/runs", wait_until="networkidle")
        page.get_by_text("success").first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        page.screenshot(path=str(screenshot))
        for task in ("compile_pipeline", "ImportExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"):
            assert task in text, f"{task} not shown in the UI grid"
        page.goto(f"http://127.0.0.1:{port}/dags/ingest_faces/runs", wait_until="networkidle")
        page.get_by_text("success").first.wait_for(timeout=30_000)
        assert "curate_span" in page.inner_text("body")
        browser.close()


def _check_evidently_ui(port: int, screenshot: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        page.get_by_text("moodloop drift").first.click()
        page.get_by_text("Share of drifted columns per window").first.wait_for(timeout=30_000)  # the dashboard
        page.screenshot(path=str(screenshot.with_name("evidently-dashboard.png")))
        page.get_by_text("Reports").first.click()
        page.get_by_text("window until").first.wait_for(timeout=30_000)
        assert "View" in page.inner_text("body")  # the latest report, openable
        page.screenshot(path=str(screenshot))
        browser.close()
