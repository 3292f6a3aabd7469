"""The local stack: Airflow 3 (api-server, scheduler, dag-processor; SQLite, LocalExecutor) on
127.0.0.1, running moodloop's DAGs on the embedded defaults (local folders), and the serving
gateway (embedded backend, TF Serving's REST and gRPC APIs) on the pushed models. Orchestration env;
the gateway runs in the pipeline env. With MOODLOOP_EXECUTOR=celery: the CeleryExecutor, Debian's
redis-server as the broker and MOODLOOP_CELERY_WORKERS (2) Celery workers, all on 127.0.0.1.
With MOODLOOP_PROFILE=production: what docker-compose runs, as processes on this machine: a
PostgreSQL cluster of the stack's own (Airflow's metadata, Celery's results, ML Metadata), the
CeleryExecutor, and the gateway in front of MOODLOOP_SERVING_REPLICAS (2) serving replicas.

  python -m moodloop.local.stack start [--faces N]   start, unpause the DAGs, drop a first batch
  python -m moodloop.local.stack status              what runs, the latest DAG runs, pushed versions
  python -m moodloop.local.stack stop                stop exactly what start started

The admin password is generated at the first start and kept in <home>/airflow/passwords.json
(mode 600), the gateway's admin token in <home>/stack/secrets.json (mode 600); nothing secret is in git.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from moodloop.core import accuracy_estimate, labelling_journal, warm_python
from moodloop.core.airflow_api import Airflow, unreachable_errors
from moodloop.core.contracts import LABELLING_QUEUE, READY_MARKER
from moodloop.core.files import publish_dir, write_private_text
from moodloop.core.settings import REPO_ROOT, Settings
from moodloop.core.status import CANARY, DRIFT, read_status
from moodloop.local import postgres
from moodloop.local.services import STOP_TIMEOUT, SUPERVISOR, Service, Supervisor, read_state

if TYPE_CHECKING:  # imported where used: the stack's start-up does not need the generator
    from data import synthetic

AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor")
DAG_IDS = (
    "watch_landing",
    "ingest_faces",
    "train_emotion_model",
    "canary_analysis",
    "serving_control",
    "monitor_drift",
)
ADMIN = "admin"
AIRFLOW_DB = "airflow.db"  # SQLite, in the stack's Airflow home
STACK_MARK = "MOODLOOP_STACK_HOME"  # every process of the stack carries it in its environment
STACK_PROFILE = "MOODLOOP_PROFILE"


GATEWAY = "gateway"
EVIDENTLY_UI = "evidently-ui"
WARM_PYTHON = "warm-python"
# What the warm Python imports once (moodloop/core/warm_python.py): what a training run's tasks
# import, not the modules they run (those run fresh in each task's process)
WARM_PYTHON_PRELOAD = (
    "tensorflow",
    "tf_keras",
    "apache_beam",
    "tensorflow_transform",
    "tensorflow_data_validation",
    "tensorflow_model_analysis",
    "tfx.dsl.compiler.compiler",
    "tfx.orchestration.metadata",
    "tfx.orchestration.portable.launcher",
    "tfx.orchestration.local.runner_utils",
    "components.pipeline",
    "components.trainer",
)
REDIS = "redis"
POSTGRES = "postgres"
AIRFLOW_DB_STEP = "airflow-db"  # a oneshot: the metadata DB created or migrated before Airflow starts
CELERY_CONCURRENCY = 2  # task processes per Celery worker: 2 workers x 2 = LocalExecutor's 4
# How Airflow behaves wherever moodloop runs it: the local stack sets these, and docker-compose's
# Airflow services must set the same values (tests/code/test_deploy.py holds the two together).
AIRFLOW_BEHAVIOUR = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
    # Celery workers told apart by name (`worker-1@host`) where several share a machine.
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "moodloop.local.worker_hostname.hostname",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
    # A task whose process died (killed, machine restarted) is failed and retried within about a
    # minute instead of Airflow's default five.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_CONCURRENCY),
}
EXECUTORS = ("local", "celery")


PORT_VARIABLES = (
    "MOODLOOP_AIRFLOW_PORT",
    "MOODLOOP_REST_PORT",
    "MOODLOOP_GRPC_PORT",
    "MOODLOOP_EVIDENTLY_PORT",
    "MOODLOOP_REDIS_PORT",
    "MOODLOOP_POSTGRES_PORT",
    "MOODLOOP_REPLICA_PORT",
)


def saved_ports(home: Path) -> dict[str, str]:
    """`status` and `stop` of a stack started on other ports (the drift drill's) or with another
    profile find it by its home alone: start saves its ports and profile there (as variables;
    those set by hand still win)."""
    saved = home / "stack" / "ports.json"
    return json.loads(saved.read_text()) if saved.exists() else {}


def _paths(settings: Settings) -> dict[str, Path]:
    airflow_home = settings.home / "airflow"
    return {
        "airflow_home": airflow_home,
        "passwords": airflow_home / "passwords.json",
        "secrets": airflow_home / "secrets.json",
        "stack_secrets": settings.home / "stack" / "secrets.json",
        "pids": settings.home / "stack" / "pids.json",  # the supervisor's pid, written by start
        "services": settings.home / "stack" / "services.json",  # each service's pid and restarts (the supervisor's)
        "logs": settings.home / "stack" / "logs",
    }


def _secret(path: Path, key: str, make) -> str:
    values = json.loads(path.read_text()) if path.exists() else {}
    if key not in values:
        values[key] = make()
        write_private_text(path, json.dumps(values))
    return values[key]


# The local stack keeps a sample of live faces for the labelling queue unless told not to: it is a
# developer's own traffic on loopback. In production keeping users' faces is the operator's choice.
def _keep_live_faces() -> dict[str, str]:
    return {"MOODLOOP_KEEP_LIVE_FACES": os.environ.get("MOODLOOP_KEEP_LIVE_FACES", "1")}


def airflow_env(settings: Settings) -> dict[str, str]:
    paths = _paths(settings)
    home = paths["airflow_home"]
    _secret(paths["passwords"], ADMIN, lambda: secrets.token_urlsafe(12))
    jwt_secret = _secret(paths["secrets"], "jwt_secret", lambda: secrets.token_urlsafe(32))
    port = settings.airflow.port
    env = dict(os.environ)
    env.update(
        {
            STACK_MARK: str(settings.home),
            "MOODLOOP_HOME": str(settings.home),
            **_keep_live_faces(),
            "AIRFLOW_HOME": str(home),
            **AIRFLOW_BEHAVIOUR,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Each LocalExecutor worker is a ~130 MB fork; 4 is plenty on 2 cores.
            "AIRFLOW__CORE__PARALLELISM": "4",
            # A writer waits up to 30 s for SQLite's lock instead of 5 (with the WAL journal, see
            # start()): the scheduler died on "database is locked" right after a start while the
            # api-server and the dag-processor wrote, and then nothing ran.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / AIRFLOW_DB}?timeout=30",
            STACK_PROFILE: settings.profile,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(paths["passwords"]),
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.airflow.executor == "celery":
        broker = f"redis://127.0.0.1:{settings.airflow.redis_port}"
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": f"{broker}/0",
                # task states go to Redis too: SQLite (the metadata DB here) under several writers
                # would only add lock waits; on PostgreSQL (below) they go there, as in docker-compose
                "AIRFLOW__CELERY__RESULT_BACKEND": f"{broker}/1",
            }
        )
    if settings.profile == "production":
        # docker-compose's databases: Airflow's metadata and Celery's results in `airflow`, ML
        # Metadata in `mlmd` (every task of a run reaches it, whichever worker runs it: the
        # profile's settings name it, Settings.metadata_location, its password in a libpq file)
        password = postgres_password(settings)
        env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url(
                    settings, password, postgres.AIRFLOW_DATABASE, "postgresql+psycopg2"
                ),
            }
        )
        if settings.airflow.executor == "celery":
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = postgres.url(
                settings, password, postgres.AIRFLOW_DATABASE, "db+postgresql+psycopg2"
            )
    return env


def postgres_password(settings: Settings) -> str:
    return _secret(_paths(settings)["stack_secrets"], "postgres_password", lambda: secrets.token_urlsafe(24))


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def api(settings: Settings) -> Airflow:
    """The stack's Airflow REST API, as its admin."""
    password = json.loads(_paths(settings)["passwords"].read_text())[ADMIN]
    return Airflow.connect(f"http://127.0.0.1:{settings.airflow.port}", ADMIN, password)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not running; /proc tells.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, process group, session) for every live process."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(proc.name)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def _leaders(settings: Settings) -> list[int]:
    """The supervisor's pid and its services' (the latest of each)."""
    paths = _paths(settings)
    pids = json.loads(paths["pids"].read_text()) if paths["pids"].exists() else {}
    return [*pids.values(), *(s["pid"] for s in read_state(paths["services"]).values())]


def stack_processes(settings: Settings, leaders: list[int] | None = None) -> list[int]:
    """Every live process of this stack: in a service's session or process group, descending
    from a service, or carrying the stack's mark in its environment. (Airflow renames its
    processes with setproctitle, which can overwrite the environment block, hence all three.)"""
    if leaders is None:
        leaders = _leaders(settings)
    table = _proc_table()
    members = {pid for pid, (_, group, session) in table.items() if group in leaders or session in leaders}
    members |= {pid for pid in leaders if pid in table}
    changed = True
    while changed:  # descendants
        grown = {pid for pid, (parent, _, _) in table.items() if parent in members}
        changed = not grown <= members
        members |= grown
    mark = f"{STACK_MARK}={settings.home}".encode()
    for pid in table:
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                members.add(pid)
        except OSError:
            continue
    members.discard(os.getpid())
    return sorted(members)


def _wait(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (KeyError, ValueError, *unreachable_errors()):
            pass
        time.sleep(interval)
    raise SystemExit(f"error: {what} not ready after {timeout:.0f} s; see the logs in the stack's logs folder")


def gateway_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            STACK_MARK: str(settings.home),
            "MOODLOOP_HOME": str(settings.home),
            "MOODLOOP_ADMIN_TOKEN": _secret(
                _paths(settings)["stack_secrets"], "gateway_admin_token", lambda: secrets.token_urlsafe(24)
            ),
            "PYTHONUNBUFFERED": "1",
            **_keep_live_faces(),
        }
    )
    if settings.serving.replicas:
        targets = ",".join(f"127.0.0.1:{port}" for port in replica_ports(settings))
        env.update({"MOODLOOP_SERVING_BACKEND": "tfserving", "MOODLOOP_TFSERVING_TARGET": targets})
    return env


def replica_ports(settings: Settings) -> list[int]:
    """The serving replicas' gRPC ports: MOODLOOP_REPLICA_PORT and the ones after it."""
    return [settings.serving.replica_port + number for number in range(settings.serving.replicas)]


def replica_env(settings: Settings, number: int) -> dict[str, str]:
    """A stand-in for one TF Serving replica: the gateway's embedded backend in a process of its
    own, speaking TF Serving's gRPC, on the stack's model base and models.config, which it polls as
    TF Serving does its --model_config_file (and takes pushed at once through
    HandleReloadConfigRequest, with the gateway's admin token). Its own home keeps its own files
    (its inference log is not the stack's: the gateway in front logs every request once)."""
    env = {**gateway_env(settings), "PYTHONUNBUFFERED": "1"}
    env.update(
        {
            "MOODLOOP_HOME": str(settings.home / "stack" / f"replica-{number}"),
            "MOODLOOP_MODEL_BASE": str(settings.model_base),
            "MOODLOOP_SERVING_CONFIG": str(settings.serving_config),
            "MOODLOOP_MODEL_NAME": settings.model_name,
            "MOODLOOP_SERVING_BACKEND": "embedded",
            "MOODLOOP_SERVING_REPLICAS": "0",
            "MOODLOOP_KEEP_LIVE_FACES": "0",
            "MOODLOOP_REST_PORT": "0",  # any free port: what is served goes through the gateway
            "MOODLOOP_GRPC_PORT": str(replica_ports(settings)[number - 1]),
        }
    )
    return env


def _gateway_health(settings: Settings) -> dict:
    """The gateway's /healthz (503 with a body while no model is pushed yet counts as up)."""
    url = f"{settings.gateway_url}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def drop_synthetic_batch(
    settings: Settings, name: str, faces: int, seed: int, shift: synthetic.Shift | None = None
) -> Path:
    """Write a SYNTHETIC batch (optionally shifted) into the landing zone atomically (hidden
    folder, then rename)."""
    from data import landing, synthetic

    final = settings.landing_dir / name
    pixels, labels, attributes = synthetic.generate_with_attributes(faces, seed=seed, shift=shift or synthetic.Shift())
    with publish_dir(final, ready_marker=READY_MARKER) as staging:
        landing.write_fer2013_csv(zip(pixels, labels, strict=True), staging / "fer2013.csv", attributes=attributes)
        landing.mark_synthetic(staging, f"seed {seed}, {shift or synthetic.Shift()}")
    return final


def _api_server_healthy(settings: Settings) -> bool:
    anonymous = Airflow.connect(f"http://127.0.0.1:{settings.airflow.port}", timeout=5)
    anonymous.monitor.get_health(_request_timeout=5)
    return True


def service_table(settings: Settings) -> list[Service]:
    """Every process of the stack, in start order: what the supervisor runs and restarts."""
    paths = _paths(settings)
    env = airflow_env(settings)
    marked = {**os.environ, STACK_MARK: str(settings.home)}
    services = []
    if settings.profile == "production":
        password = postgres_password(settings)
        services.append(
            Service(
                POSTGRES,
                postgres.server_command(settings),
                marked,
                ready=lambda: postgres.ready(settings, password),
                stop_signal=postgres.STOP_SIGNAL,
                about=f"127.0.0.1:{settings.postgres_port}, databases {', '.join(postgres.DATABASES)}",
            )
        )
    command = [sys.executable, "-m", "moodloop.local.stack", "prepare-db"]
    services.append(Service(AIRFLOW_DB_STEP, command, env, REPO_ROOT, oneshot=True, about="created or migrated"))
    if settings.airflow.executor == "celery":
        # Debian's redis-server, the Celery broker: no persistence (a lost queued task is failed by
        # the scheduler's heartbeat check and retried), its own folder under the stack's home.
        folder = settings.home / "stack" / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        port = settings.airflow.redis_port
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
        command += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        services.append(
            Service(
                REDIS,
                command,
                marked,
                ready=lambda port=port: _port_open(port),  # bound now: `port` is reused below
                about=f"127.0.0.1:{port}, the Celery broker",
            )
        )
    for name in AIRFLOW_SERVICES:
        # The DAGs are unpaused at creation: without the execution API up, the scheduler's first
        # task (monitor_drift's, at once) fails with "connection refused" and fails its run.
        ready = (lambda: _api_server_healthy(settings)) if name == "api-server" else None
        services.append(Service(name, [_airflow_bin(), name], env, ready=ready))
    if settings.airflow.executor == "celery":
        for number in range(1, settings.airflow.celery_workers + 1):
            name = f"worker-{number}"
            pid_file = paths["logs"].parent / f"{name}.pid"
            command = [_airflow_bin(), "celery", "worker", "--celery-hostname", f"{name}@%h"]
            # Its own pid file (two workers on one machine), and no log server: the task logs are
            # files on this machine, which the api-server reads directly.
            command += ["--pid", str(pid_file), "--skip-serve-logs"]
            services.append(Service(name, command, {**env, "MOODLOOP_WORKER_NAME": name}, pid_file=pid_file))
    gateway = [str(settings.pipeline_python), "-m", "serving.gateway"]
    for number, port in enumerate(replica_ports(settings), start=1):
        services.append(
            Service(
                f"replica-{number}",
                gateway,
                replica_env(settings, number),
                REPO_ROOT,
                ready=lambda port=port: _port_open(port),
                about=f"gRPC 127.0.0.1:{port}, a stand-in for TF Serving",
            )
        )
    about = f"the tfserving backend over {settings.serving.replicas} replicas" if settings.serving.replicas else ""
    services.append(Service(GATEWAY, gateway, gateway_env(settings), REPO_ROOT, about=about))
    # The drift reports' UI: monitor_drift adds each window's report to this workspace.
    workspace, port = settings.drift.evidently_workspace, settings.drift.evidently_port
    command = [str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", str(workspace)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    services.append(Service(EVIDENTLY_UI, command, marked, about=f"http://127.0.0.1:{port}"))
    warm = warm_python_service(settings, marked)
    if warm is not None:
        services.append(warm)
    return services


def warm_python_service(settings: Settings, env: dict[str, str]) -> Service | None:
    """The pipeline env's warm Python: last, and never waited for (a task that comes before its
    socket exists imports TensorFlow itself, as without it)."""
    socket_path = settings.airflow.warm_python_socket
    if not settings.airflow.warm_python:
        return None
    if len(str(socket_path)) > warm_python.MAX_SOCKET_PATH:
        logging.warning("no warm Python: its socket path is longer than a Unix socket allows: %s", socket_path)
        return None
    command = warm_python.serve_command(settings.pipeline_python, socket_path, WARM_PYTHON_PRELOAD)
    return Service(WARM_PYTHON, command, env, REPO_ROOT, about=f"{socket_path}, the pipeline tasks' imports done once")


def prepare_airflow_db(settings: Settings) -> int:
    """The `airflow-db` step (a oneshot service, before Airflow starts): the databases created on
    PostgreSQL, Airflow's tables created or migrated, SQLite switched to write-ahead logging."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if settings.profile == "production":
        created = postgres.create_databases(settings, postgres_password(settings))
        logging.info("PostgreSQL databases created: %s", ", ".join(created) or "none (all there)")
    env = airflow_env(settings)
    subprocess.run([_airflow_bin(), "db", "migrate"], env=env, check=True)
    if settings.profile != "production":
        # Write-ahead logging (a property of the file, kept from now on): readers no longer block
        # the one writer, nor it them, so the four Airflow processes rarely wait for each other.
        with contextlib.closing(sqlite3.connect(_paths(settings)["airflow_home"] / AIRFLOW_DB)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    logging.info("Airflow's metadata DB is ready")
    return 0


def supervise(settings: Settings) -> int:
    """The supervisor process `start` launches (see moodloop/local/services.py)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "connection refused" while the api-server starts
    settings.drift.evidently_workspace.mkdir(parents=True, exist_ok=True)
    paths = _paths(settings)
    return Supervisor(service_table(settings), paths["logs"], paths["services"]).run()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _refusal(settings: Settings) -> str:
    """Why this stack cannot start here ("" when it can)."""
    if stack_processes(settings):
        return f"the stack is already running for {settings.home}: python -m moodloop.local.stack status"
    if settings.airflow.executor not in EXECUTORS:
        return f"MOODLOOP_EXECUTOR={settings.airflow.executor!r}: use one of {', '.join(EXECUTORS)}"
    if settings.airflow.executor == "celery":
        if not shutil.which("redis-server"):
            return "MOODLOOP_EXECUTOR=celery needs Redis: sudo apt-get install redis-server (make setup does it)"
        if _port_open(settings.airflow.redis_port):  # another Redis would take our tasks
            return (
                f"port {settings.airflow.redis_port} is in use (a Redis of the system or of another stack?); "
                "set MOODLOOP_REDIS_PORT to a free port"
            )
    if settings.profile == "production" and _port_open(settings.postgres_port):
        return f"port {settings.postgres_port} is in use: set MOODLOOP_POSTGRES_PORT to a free port"
    return ""


def start(settings: Settings, faces: int) -> int:
    paths = _paths(settings)
    refusal = _refusal(settings)
    if refusal:
        print(refusal)
        return 1 if stack_processes(settings) else 2
    production = settings.profile == "production"
    started = time.monotonic()
    paths["logs"].mkdir(parents=True, exist_ok=True)
    if production:
        if postgres.init(settings, postgres_password(settings)):
            print(f"==> PostgreSQL cluster created in {postgres.data_dir(settings)}", flush=True)
        postgres.write_passfile(settings, postgres_password(settings))
        database = f"PostgreSQL 127.0.0.1:{settings.postgres_port}, database {postgres.AIRFLOW_DATABASE}"
    else:
        database = f"SQLite in {paths['airflow_home']}"
    print(f"==> profile {settings.profile}: Airflow's metadata DB is {database}", flush=True)
    ports = (
        settings.airflow.port,
        settings.serving.rest_port,
        settings.serving.grpc_port,
        settings.drift.evidently_port,
        settings.airflow.redis_port,
        settings.postgres_port,
        settings.serving.replica_port,
    )
    saved = {name: str(port) for name, port in zip(PORT_VARIABLES, ports, strict=True)}
    (settings.home / "stack" / "ports.json").write_text(json.dumps({**saved, STACK_PROFILE: settings.profile}))
    paths["services"].unlink(missing_ok=True)
    with open(paths["logs"] / f"{SUPERVISOR}.log", "ab") as log:  # the child keeps its own copy
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "moodloop.local.stack", "supervise"],
            env={**os.environ, STACK_MARK: str(settings.home)},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # at once, so that `stop` finds what started even when a later step fails
    paths["pids"].write_text(json.dumps({SUPERVISOR: supervisor.pid}))
    print(f"==> {SUPERVISOR} started (pid {supervisor.pid}, log {paths['logs'] / (SUPERVISOR + '.log')})", flush=True)

    def service_started(name: str) -> dict | None:
        if supervisor.poll() is not None:
            raise SystemExit(f"error: the supervisor exited ({supervisor.returncode}); see {paths['logs']}")
        return read_state(paths["services"]).get(name)

    def service_ended(name: str) -> dict | None:
        state = service_started(name)
        return state if state and state["state"] in ("done", "given up") else None

    for service in service_table(settings):
        state = _wait(service.name, lambda name=service.name: service_started(name), service.ready_timeout + 60, 0.2)
        log_path = paths["logs"] / f"{service.name}.log"
        about = f", {service.about}" if service.about else ""
        if service.oneshot:
            state = _wait(service.name, lambda name=service.name: service_ended(name), 600, 0.5)
            if state["state"] != "done":  # nothing after it can work: stop what started (PostgreSQL)
                stop(settings)
                raise SystemExit(f"error: {service.name} failed (exit codes {state['exit_codes']}); see {log_path}")
            print(f"==> {service.name} done{about} (log {log_path})", flush=True)
            continue
        print(f"==> {service.name} started (pid {state['pid']}{about}, log {log_path})", flush=True)

    _wait("the serving gateway", lambda: _gateway_health(settings), 120)
    from airflow_client.client.models.dag_patch_body import DAGPatchBody

    airflow = api(settings)

    dags: list = []

    def dags_parsed():
        dags[:] = airflow.dags.get_dags(limit=100, _request_timeout=airflow.timeout).dags
        return {d.dag_id for d in dags} >= set(DAG_IDS)

    _wait("the DAGs (dag-processor)", dags_parsed, 180)
    # Unpaused at creation; only a DAG paused since (by hand, before a restart) is unpaused here.
    # Not one PATCH more: Airflow's api-server writes each one's audit log from its event loop,
    # which on SQLite then waits on the database lock while a task's execution-API call in the same
    # process holds it and needs that loop to commit. Both waited out the 30 s busy timeout, and a
    # scheduler waiting meanwhile died on "database is locked" (seen at a start, as the first tasks
    # began; nothing ran after).
    paused = [d.dag_id for d in dags if d.dag_id in DAG_IDS and d.is_paused]
    for dag_id in paused:
        airflow.dags.patch_dag(dag_id, DAGPatchBody(is_paused=False), _request_timeout=airflow.timeout)
    unpaused = f"unpaused {', '.join(paused)}" if paused else "none paused"
    print(f"==> DAGs: {', '.join(DAG_IDS)}; {unpaused} ({time.monotonic() - started:.0f} s)", flush=True)

    _welcome(settings, paths, faces)
    return 0


def _welcome(settings: Settings, paths: dict[str, Path], faces: int) -> None:
    """What `start` prints once the stack is up: its addresses, the first batch, how to stop it."""
    celery = settings.airflow.executor == "celery"
    production = settings.profile == "production"
    password = json.loads(paths["passwords"].read_text())[ADMIN]
    airflow_ui = f"http://127.0.0.1:{settings.airflow.port}"
    backend = "embedded backend"
    if settings.serving.replicas:
        backend = f"over {settings.serving.replicas} replicas on gRPC " + ", ".join(map(str, replica_ports(settings)))
    print(f"\nmoodloop is up.\n  faces page   {settings.gateway_url}/   (photos, videos, webcam, why?, corrections)")
    print(f"  Airflow UI   {airflow_ui}   user {ADMIN}   password {password}")
    print(
        f"  serving      REST {settings.gateway_url}/v1/models/{settings.model_name}"
        f"   gRPC {settings.serving.gateway_host}:{settings.serving.grpc_port}   (TF Serving's APIs; {backend})"
    )
    print(f"  drift UI     http://127.0.0.1:{settings.drift.evidently_port}   (Evidently; DAG monitor_drift fills it)")
    if celery:
        print(
            f"  executor     Celery: {settings.airflow.celery_workers} workers (worker-1..), Redis broker "
            f"127.0.0.1:{settings.airflow.redis_port}; the task instances name the worker that ran them"
        )
    if production:
        print(
            f"  databases    PostgreSQL 127.0.0.1:{settings.postgres_port}: {postgres.AIRFLOW_DATABASE} (Airflow, "
            f"Celery results), {postgres.MLMD_DATABASE} (ML Metadata); password in {paths['stack_secrets']}"
        )
    if faces > 0:
        batch = drop_synthetic_batch(settings, f"synthetic-{time.strftime('%Y%m%dT%H%M%S')}", faces, seed=0)
        print(f"  first batch  {batch}  ({faces} SYNTHETIC faces)")
        print("The loop runs by itself: watch_landing (every 30 s) -> ingest_faces -> train_emotion_model -> push.")
        print(f"Expect a pushed model under {settings.model_base} within about 10 minutes on 2 cores.")
    # `make status` / `make stop` find a stack by MOODLOOP_HOME: name it when it is not the default.
    home = "" if settings.home == (REPO_ROOT / ".moodloop").resolve() else f"MOODLOOP_HOME={settings.home} "
    print(f"  status: {home}make status     stop: {home}make stop     logs: {paths['logs']}")


def status(settings: Settings) -> int:
    paths = _paths(settings)
    services = read_state(paths["services"])
    running = stack_processes(settings)
    print(f"stack home {settings.home} (profile {settings.profile}): {len(running)} process(es) running")
    for service, state in services.items():
        shown = state["state"] if _alive(state["pid"]) or state["state"] != "running" else "stopped"
        shown = shown if shown == "running" else shown.upper()
        restarts = f"  restarts {state['restarts']}" if state["restarts"] else ""
        exits = f" (exit codes {', '.join(map(str, state['exit_codes']))})" if state["exit_codes"] else ""
        print(f"  {service:<14s} pid {state['pid']:<8d} {shown}{restarts}{exits}")
    if running:
        try:
            airflow = api(settings)
            for dag_id in DAG_IDS:
                latest = airflow.dag_runs.get_dag_runs(
                    dag_id, order_by=["-run_after"], limit=3, _request_timeout=airflow.timeout
                ).dag_runs
                runs = ", ".join(f"{r.dag_run_id}={r.state.value}" for r in latest) or "no runs yet"
                print(f"  {dag_id:<20s} {runs}")
        except (KeyError, *unreachable_errors()) as exc:
            print(f"  Airflow API not answering: {exc}")
    if settings.profile == "production" and running:
        tables = postgres.table_counts(settings, postgres_password(settings))
        shown = ", ".join(f"{name} {count} tables" for name, count in tables.items()) or "not answering"
        print(f"  PostgreSQL   127.0.0.1:{settings.postgres_port}  {shown}")
    versions = sorted(p.name for p in settings.model_base.glob("*") if p.name.isdigit())
    print(f"  model versions under {settings.model_base}: {', '.join(versions) or 'none yet'}")
    if running:
        try:
            health = _gateway_health(settings)
            print(
                f"  gateway :{settings.serving.rest_port}  serving versions {health.get('available_versions', [])}"
                f"  labels {health.get('labels', {})}"
            )
            for replica in health.get("replicas", []):
                state = "healthy" if replica["healthy"] else f"DOWN ({replica['reason']})"
                print(f"    replica {replica['target']}  {state}, {replica['calls']} calls")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"  gateway not answering: {exc}")
    drift = read_status(settings.status_dir, DRIFT)
    if drift is not None:
        print("  " + drift_summary(drift))
    queue = labelling_summary(settings)
    if queue:
        print("  " + queue)
    canary = read_status(settings.status_dir, CANARY)
    if canary is not None:
        print("  " + canary_summary(canary))
    return 0


def labelling_summary(settings: Settings) -> str:
    """The labelling queue in one line ("" when none was filled): faces queued and answered."""
    path = settings.labelling_dir / LABELLING_QUEUE
    try:
        queue = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    answered = labelling_journal.answered_ids(settings.labelling_dir)
    waiting = sum(f["face_id"] not in answered for f in queue.get("faces", []))
    return (
        f"labelling queue ({queue.get('strategy')}): {waiting} of {len(queue.get('faces', []))} faces wait for a "
        f"label in the faces page's Label tab ({settings.gateway_url}/); {len(answered)} answered so far, "
        f"a batch every {queue.get('budget')} labelled faces"
    )


def drift_summary(latest: dict) -> str:
    """The latest drift window: its verdict, and each version's accuracy estimated without labels
    beside the realised one where feedback labels exist."""
    line = f"latest drift window: {latest.get('outcome')} ({(latest.get('window') or {}).get('records', 0)} records)"
    if (latest.get("retrain") or {}).get("waits_for_labels"):
        line += "; the retrain waits for the labels the queue asks for"
    live = latest.get("live_accuracy") or {}
    for version, found in (latest.get("accuracy_estimate") or {}).items():
        line += f"; version {version}: {accuracy_estimate.describe(found, live.get(version))}"
    return line


def canary_summary(decision: dict) -> str:
    """The latest canary decision in one line: the action, the evidence that decided, both sides' numbers."""
    evidence = {"labels": "on feedback labels", "heuristics": "on label-free checks (too few labels)"}
    line = f"latest canary decision: {decision['action']}"
    if "canary_version" in decision:
        line += f" (canary v{decision['canary_version']} vs stable v{decision['stable_version']}"
        line += f", decided {evidence.get(decision.get('evidence'), 'without evidence yet')})"
    for side in ("stable", "canary"):
        numbers = decision.get(side) or {}
        if numbers.get("requests"):
            accuracy = f", accuracy {numbers['accuracy']:.3f}" if "accuracy" in numbers else ""
            if numbers.get("accuracy_estimate"):
                found = numbers["accuracy_estimate"]
                accuracy += f", estimated {accuracy_estimate.AccuracyEstimate(**found[found['decides']])}"
            line += (
                f"; {side} {numbers['requests']} predictions, {numbers['labelled']} labelled{accuracy}, "
                f"confidence {numbers['mean_confidence']:.3f}"
            )
    reasons = decision.get("reasons") or []
    return line + (f"; {reasons[0]}" if reasons else "")


def stop(settings: Settings, timeout: float = 30.0) -> int:
    paths = _paths(settings)
    leaders = _leaders(settings)
    members = stack_processes(settings, leaders)
    if not members:
        print("nothing to stop: no moodloop process is running")
        paths["pids"].unlink(missing_ok=True)
        return 0
    for service, state in read_state(paths["services"]).items():
        print(f"stopping {service} (pid {state['pid']})")
    # The supervisor first, so that it restarts nothing: it stops its services (SIGTERM, then
    # SIGKILL after STOP_TIMEOUT); what is left after it (task processes) is stopped below.
    supervisor = json.loads(paths["pids"].read_text()).get(SUPERVISOR) if paths["pids"].exists() else None
    if supervisor and _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT + 5
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    members = stack_processes(settings, leaders)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while stack_processes(settings, leaders) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = stack_processes(settings, leaders)
    for pid in leftovers:  # ignored SIGTERM for `timeout` seconds
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        print(f"killed {len(leftovers)} process(es) that did not stop within {timeout:.0f} s")
        time.sleep(1)
    remaining = stack_processes(settings, leaders)
    if not remaining:
        paths["pids"].unlink(missing_ok=True)
    print("stopped: no moodloop process left" if not remaining else f"still running: {remaining}")
    return 0 if not remaining else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moodloop.local.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start Airflow, unpause the DAGs, drop a first synthetic batch")
    p.add_argument(
        "--faces", type=int, default=5000, help="faces in the first synthetic batch; 0 = none (default 5000)"
    )
    sub.add_parser("status", help="what is running, latest DAG runs, pushed model versions")
    sub.add_parser("stop", help="stop every process the start command started")
    sub.add_parser("supervise", help="(run by start) start the services and restart any that exits")
    sub.add_parser("prepare-db", help="(run by the supervisor) create or migrate Airflow's metadata DB")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command != "start":
        settings = Settings.from_env(fallback=saved_ports(settings.home))
    if args.command == "start":
        return start(settings, args.faces)
    if args.command == "status":
        return status(settings)
    if args.command == "supervise":
        return supervise(settings)
    if args.command == "prepare-db":
        return prepare_airflow_db(settings)
    return stop(settings)


if __name__ == "__main__":
    sys.exit(main())
