"""One settings object for every stage: environment variables with local defaults.

Stages receive a `Settings` (or a section of it) as arguments; nothing else reads the environment.
The fields that every stage shares (where things live) are at the top; the rest is in one section
per concern: `training`, `gate`, `serving`, `canary`, `drift`, `s3`, `airflow`. Each field names its
MOODLOOP_* variable once, next to its default. `moodloop settings` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # moodloop/core/settings.py

# Beam when MOODLOOP_BEAM_ARGS is not set: the in-memory DirectRunner with one worker, or the
# multi-process DirectRunner on every core for spans from MOODLOOP_BEAM_MULTIPROCESS_FACES on a
# machine with cores to spare (components/pipeline.py beam_args_for). A user with a Flink, Spark
# or Dataflow cluster passes their own args (README, "When one machine is not enough").
# Both run their workers in this venv (in this process, or in subprocesses of its interpreter),
# so the workers' dependencies are the pipeline env's lock file. Naming it keeps TFX from
# repackaging itself for remote workers before each Beam component (tfx/utils/dependency_utils.py
# build_ephemeral_package: a copy of the TFX install and a `setup.py sdist` subprocess, 1.5 s, 49 MB
# left in /tmp every time, 4 times a run); the DirectRunner never reads the file. cloudpickle, not
# dill: Beam's dill pickler sets dill's log level around every pickle, and each setLevel clears
# the cache of every logger in the process (thousands with TF and TFX loaded): 3 s a run.
LOCAL_WORKER_ARGS = (
    f"--requirements_file={REPO_ROOT / 'requirements' / 'pipeline.lock.txt'}",
    "--pickle_library=cloudpickle",
)
IN_MEMORY_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1", *LOCAL_WORKER_ARGS)
MULTI_PROCESS_BEAM_ARGS = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",  # 0: every core
    *LOCAL_WORKER_ARGS,
)

_FALSE = ("0", "false", "no", "")


def setting(env: str, default: Any = dataclasses.MISSING, *, under_home: str | None = None) -> Any:
    """A field read from the variable `env`; its default is `default`, or `under_home` joined to home."""
    if under_home is not None:
        return dataclasses.field(metadata={"env": env, "under_home": under_home})
    return dataclasses.field(default=default, metadata={"env": env})


def _parse(kind: str, raw: str) -> object:
    if kind == "bool":
        return raw.strip().lower() not in _FALSE
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw).expanduser()
    if kind == "tuple[float, ...]":
        return tuple(float(x) for x in raw.split(",") if x.strip())
    if kind == "tuple[str, ...]":
        return tuple(shlex.split(raw))
    return raw


def _read(
    where: str,
    fields: list[dataclasses.Field],
    home: Path,
    overrides: dict[str, object],
    environ: Mapping[str, str],
) -> dict[str, object]:
    """The `fields` from `environ`, defaults where unset, then `overrides`."""
    by_name = {f.name: f for f in fields}
    unknown = set(overrides) - set(by_name)
    if unknown:
        raise TypeError(f"unknown {where}: {sorted(unknown)}")
    values: dict[str, object] = {}
    for name, f in by_name.items():
        if name in overrides and overrides[name] is not None:
            values[name] = overrides[name]
        elif (raw := environ.get(f.metadata["env"])) is not None:
            values[name] = _parse(str(f.type), raw)
        elif "under_home" in f.metadata:
            values[name] = home / f.metadata["under_home"]
        else:
            values[name] = f.default
    return values


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    epochs: int = setting("MOODLOOP_EPOCHS", 10)  # training epochs of a cold start (a warm start runs a share of them)
    # ... after which a cold fit goes on while its held-out loss still improves, up to this many
    # epochs; it stops MOODLOOP_EARLY_STOP_PATIENCE epochs after its best one and keeps that one's
    # weights (MOODLOOP_EPOCHS or fewer: exactly MOODLOOP_EPOCHS)
    max_epochs: int = setting("MOODLOOP_MAX_EPOCHS", 40)
    early_stop_patience: int = setting("MOODLOOP_EARLY_STOP_PATIENCE", 5)  # epochs without a better held-out loss
    batch_size: int = setting("MOODLOOP_BATCH_SIZE", 64)  # faces per training step
    model_size: str = setting("MOODLOOP_MODEL_SIZE", "small")  # tiny | small | medium | vgg
    # Adam's learning rate of a cold start. 0.002, not 0.001: the drift drill with the product's
    # defaults healed the `dim` shift to 0.832, 0.811, 0.839 against 0.812, 0.776, 0.785 (seeds 0-2)
    learning_rate: float = setting("MOODLOOP_LEARNING_RATE", 0.002)
    augment: bool = setting("MOODLOOP_AUGMENT", True)  # flips/shifts/zoom: on for real data; off speeds up tests
    seed: int = setting("MOODLOOP_SEED", 0)  # the same faces and seed train the same model
    span_window: int = setting("MOODLOOP_SPAN_WINDOW", 0)  # train on the newest N spans; 0 = all
    # Warm start: a retrain starts from the stable champion's weights when the architecture matches
    warm_start: bool = setting("MOODLOOP_WARM_START", True)
    warm_epochs_fraction: float = setting("MOODLOOP_WARM_EPOCHS_FRACTION", 0.2)  # share of `epochs` (>= 1)
    warm_learning_rate_factor: float = setting("MOODLOOP_WARM_LEARNING_RATE_FACTOR", 0.3)  # fine-tunes at lr x this
    # ... and only while the champion still fits: its weights may score at most this much lower on
    # today's held-out faces than on its own when trained (more: the data has moved, train cold)
    warm_max_accuracy_drop: float = setting("MOODLOOP_WARM_MAX_ACCURACY_DROP", 0.03)
    # Self-training after a drift (components/self_training.py): when the newest span is the labelling
    # queue's answers, a first fit pseudo-labels the kept live faces nobody answered that it is
    # sure of, and a second cold fit learns from both; they never enter the held-out faces
    self_train: bool = setting("MOODLOOP_SELF_TRAIN", True)
    self_train_confidence: float = setting("MOODLOOP_SELF_TRAIN_CONFIDENCE", 0.9)  # a pseudo-label's top probability
    self_train_max_faces: int = setting("MOODLOOP_SELF_TRAIN_MAX_FACES", 8000)  # the newest unanswered faces
    tune: bool = setting("MOODLOOP_TUNE", False)  # a TFX Tuner (KerasTuner random search) before the Trainer
    tune_trials: int = setting("MOODLOOP_TUNE_TRIALS", 6)  # the Tuner's trials (each MOODLOOP_TUNE_EPOCHS epochs)
    tune_epochs: int = setting("MOODLOOP_TUNE_EPOCHS", 3)  # per trial
    # >1: the Trainer fits on that many worker processes with MultiWorkerMirroredStrategy
    # (components/distributed_training.py); the model is the same either way
    workers: int = setting("MOODLOOP_TRAIN_WORKERS", 1)
    # What a retrain trains: `champion` fine-tunes the champion's own network (an adopted Keras
    # model: its architecture, preprocessing and class order), `moodloop` trains moodloop's CNN
    # (warm-started by the rules above), `auto` fine-tunes a champion that can be, else moodloop's CNN
    train_from: str = setting("MOODLOOP_TRAIN_FROM", "auto")
    fine_tune_epochs: int = setting("MOODLOOP_FINE_TUNE_EPOCHS", 3)  # epochs of a fine-tuning run
    fine_tune_learning_rate: float = setting("MOODLOOP_FINE_TUNE_LEARNING_RATE", 0.0001)  # Adam's, small: keep skill
    # how many of the network's last layers with weights learn; 0: all of them
    fine_tune_layers: int = setting("MOODLOOP_FINE_TUNE_LAYERS", 0)
    # Real-face anchors (components/fine_tune.py): without them synthetic faces turned a real smile
    # "neutral". The newest kept live faces of the last day, at most this many (0: none) ...
    fine_tune_anchors: int = setting("MOODLOOP_FINE_TUNE_ANCHORS", 2000)
    # ... keep the network's own answers while it learns, weighing this share of the labelled faces
    fine_tune_anchor_weight: float = setting("MOODLOOP_FINE_TUNE_ANCHOR_WEIGHT", 1.0)

    def with_conf(self, **conf: Any) -> TrainingSettings:
        """These settings with a run's conf over them (e.g. a DAG run's `{"epochs": 5}`): None keeps
        the setting, text is read as the setting's type, an unknown name is a TypeError."""
        by_name = {f.name: f for f in dataclasses.fields(self)}
        if unknown := set(conf) - set(by_name):
            raise TypeError(f"unknown training settings in the run's conf: {sorted(unknown)}")
        given = {k: _parse(str(by_name[k].type), v) if isinstance(v, str) else v for k, v in conf.items()}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateSettings:
    """The Evaluator's thresholds (overall slice) and the offline A/B gate's: the one place their
    values are defined (components/pipeline.py and components/ab_gate.py take them from here)."""

    min_accuracy: float = setting("MOODLOOP_MIN_ACCURACY", 0.40)  # absolute floor, for every candidate
    max_accuracy_drop: float = setting("MOODLOOP_MAX_ACCURACY_DROP", 0.01)  # Evaluator: vs the baseline
    alpha: float = setting("MOODLOOP_GATE_ALPHA", 0.05)  # false-promotion level of the superiority test
    min_examples: int = setting("MOODLOOP_GATE_MIN_EXAMPLES", 200)  # fewer held-out faces: no decision
    max_class_recall_drop: float = setting("MOODLOOP_GATE_MAX_CLASS_RECALL_DROP", 0.05)  # significant: blocks
    # The bias audit: a slice (moodloop/core/slices.py) with this many held-out faces is guarded like a
    # class: an accuracy drop beyond the bound that is significant blocks the candidate.
    min_slice_examples: int = setting("MOODLOOP_GATE_MIN_SLICE_EXAMPLES", 100)
    # After a drift the held-out faces are mostly earlier traffic; when the newest span is live faces
    # labelled on the loop's request (source=labelled), its held-out faces stand for what users send
    # now and the gate judges on them from this many (McNemar is exact at any size: fewer faces cost
    # power, not false promotions; a labelling budget of 500 holds ~100 out)
    min_current_examples: int = setting("MOODLOOP_GATE_MIN_CURRENT_EXAMPLES", 50)
    # the bias audit: the accuracy drop a guarded slice may show
    max_slice_accuracy_drop: float = setting("MOODLOOP_GATE_MAX_SLICE_ACCURACY_DROP", 0.05)
    # Over an adopted champion (a team's own model) while none of the held-out faces is real
    # (source=batch, corrections or labelled), a candidate is refused unless this is set: synthetic scores
    # alone do not replace a model trained on real faces
    allow_synthetic_over_real: bool = setting("MOODLOOP_ALLOW_SYNTHETIC_OVER_REAL", False)
    # The gate also fits each candidate's accuracy estimator (components/accuracy_estimator.py) on
    # this many windows of its held-out faces, most of them corrupted
    estimator_windows: int = setting("MOODLOOP_ESTIMATOR_WINDOWS", 200)
    estimator_window_faces: int = setting("MOODLOOP_ESTIMATOR_WINDOW_FACES", 200)  # held-out faces per window


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingSettings:
    backend: str = setting("MOODLOOP_SERVING_BACKEND", "embedded")  # embedded (in-process) | tfserving (gRPC)
    # TF Serving's gRPC address for the tfserving backend; several replicas: host:port,host:port
    tfserving_target: str = setting("MOODLOOP_TFSERVING_TARGET", "127.0.0.1:8500")
    tfserving_health_seconds: float = setting("MOODLOOP_TFSERVING_HEALTH_SECONDS", 1.0)  # replica status checks
    # The local stack's serving replicas: 0 = the gateway serves with its embedded backend; N = N
    # stand-ins for TF Serving (embedded-backend processes on gRPC ports replica_port, +1, ..), the
    # gateway in front of them with the tfserving backend (2 in the production profile)
    replicas: int = setting("MOODLOOP_SERVING_REPLICAS", 0)
    replica_port: int = setting("MOODLOOP_REPLICA_PORT", 8510)  # the first replica's gRPC port
    gateway_host: str = setting("MOODLOOP_GATEWAY_HOST", "127.0.0.1")  # the address the gateway listens on
    rest_port: int = setting("MOODLOOP_REST_PORT", 8501)  # TF Serving's REST API and the faces page
    grpc_port: int = setting("MOODLOOP_GRPC_PORT", 8500)  # TF Serving's gRPC API
    poll_seconds: float = setting("MOODLOOP_SERVING_POLL_SECONDS", 2.0)  # re-read models.config, scan the base
    # a request not answered by then fails with DEADLINE_EXCEEDED
    request_timeout_seconds: float = setting("MOODLOOP_REQUEST_TIMEOUT_SECONDS", 10.0)
    max_upload_bytes: int = setting("MOODLOOP_MAX_UPLOAD_BYTES", 32 * 1024 * 1024)  # photo / video / JSON body
    face_detector: str = setting("MOODLOOP_FACE_DETECTOR", "mtcnn")  # mtcnn (eyes, aligned) | haar (OpenCV)
    min_confidence: float = setting("MOODLOOP_MIN_CONFIDENCE", 0.5)  # below: the face is "uncertain"
    admin_token: str = setting("MOODLOOP_ADMIN_TOKEN", "")  # reload / promote / rollback; "" disables them
    log_buffer_records: int = setting("MOODLOOP_LOG_BUFFER_RECORDS", 20000)  # bounded: overflow is counted
    # the inference log is written at least this often
    log_flush_seconds: float = setting("MOODLOOP_LOG_FLUSH_SECONDS", 5.0)
    # Faces corrected on the web page (or any feedback on an analysed face) gather here; this many
    # make a landing batch (images + labels.csv), which the next ingest and training see.
    corrections_per_batch: int = setting("MOODLOOP_CORRECTIONS_PER_BATCH", 20)
    recent_faces: int = setting("MOODLOOP_RECENT_FACES", 5000)  # face crops kept in memory for feedback
    max_instances: int = setting("MOODLOOP_MAX_INSTANCES", 256)  # instances per predict request
    # Admission (serving/admission.py): requests working at once (threads, per API: REST and gRPC),
    # and how many more may wait for one; beyond that a request is refused at once (429 / RESOURCE_EXHAUSTED).
    max_concurrent_requests: int = setting("MOODLOOP_MAX_CONCURRENT_REQUESTS", 16)
    # requests waiting for a batch; more are RESOURCE_EXHAUSTED (429)
    max_queued_requests: int = setting("MOODLOOP_MAX_QUEUED_REQUESTS", 64)
    # Feedback labels feed the canary's rollback rule and become training batches: who may send them.
    feedback_token: str = setting("MOODLOOP_FEEDBACK_TOKEN", "")  # "": anyone (a public faces page)
    feedback_per_minute: float = setting("MOODLOOP_FEEDBACK_PER_MINUTE", 1200.0)  # per client address; 0: no limit
    # The live-face sample the labelling queue chooses from (opt-in: it keeps users' faces). On, the
    # gateway writes each predicted face (48x48 grey PNG, probabilities, embedding) to the inference
    # log's faces/ table, at most this many per hour, and the drift job deletes them after the days.
    keep_live_faces: bool = setting("MOODLOOP_KEEP_LIVE_FACES", False)
    live_faces_per_hour: int = setting("MOODLOOP_LIVE_FACES_PER_HOUR", 2000)  # beyond: not kept, counted
    live_faces_days: float = setting("MOODLOOP_LIVE_FACES_DAYS", 7.0)  # retention of the kept faces


@dataclasses.dataclass(frozen=True, kw_only=True)
class CanarySettings:
    """The canary's rollout and its analysis (monitoring/canary.py): the one place their values are
    defined."""

    share: float = setting("MOODLOOP_CANARY_SHARE", 0.1)  # the Pusher's first share; used while no traffic file
    steps: tuple[float, ...] = setting("MOODLOOP_CANARY_STEPS", (0.1, 0.5, 1.0))  # after the last: promote
    bake_seconds: float = setting("MOODLOOP_CANARY_BAKE_SECONDS", 600.0)  # least time per step
    min_requests: int = setting("MOODLOOP_CANARY_MIN_REQUESTS", 200)  # per side and step, before judging
    min_labels: int = setting("MOODLOOP_CANARY_MIN_LABELS", 100)  # per side: from here the labels decide
    min_class_labels: int = setting("MOODLOOP_CANARY_MIN_CLASS_LABELS", 20)  # per side and class: recall tested
    max_class_f1_drop: float = setting("MOODLOOP_CANARY_MAX_CLASS_F1_DROP", 0.10)  # labels, significantly
    alpha: float = setting("MOODLOOP_CANARY_ALPHA", 0.05)  # significance of the canary's one-sided tests
    max_accuracy_drop: float = setting("MOODLOOP_CANARY_MAX_ACCURACY_DROP", 0.02)  # labels: worse, significantly
    max_confidence_drop: float = setting("MOODLOOP_CANARY_MAX_CONFIDENCE_DROP", 0.10)  # no labels: mean top-1
    max_latency_ratio: float = setting("MOODLOOP_CANARY_MAX_LATENCY_RATIO", 2.0)  # p95 canary / p95 stable ...
    min_latency_increase_ms: float = setting("MOODLOOP_CANARY_MIN_LATENCY_INCREASE_MS", 20.0)  # ... and by this
    max_class_shift: float = setting("MOODLOOP_CANARY_MAX_CLASS_SHIFT", 0.25)  # no labels: TV from the expected mix
    # error rate the canary may add over stable's
    max_error_rate_increase: float = setting("MOODLOOP_CANARY_MAX_ERROR_RATE_INCREASE", 0.02)
    every_minutes: float = setting("MOODLOOP_CANARY_EVERY_MINUTES", 5.0)  # the canary_analysis DAG's schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriftSettings:
    window_records: int = setting("MOODLOOP_DRIFT_WINDOW_RECORDS", 0)  # > 0: windows; 0: all new once min_records
    min_records: int = setting("MOODLOOP_DRIFT_MIN_RECORDS", 200)  # a window with fewer predictions is not judged
    share: float = setting("MOODLOOP_DRIFT_SHARE", 0.3)  # share of monitored columns that must drift
    cooldown_minutes: float = setting("MOODLOOP_DRIFT_COOLDOWN_MINUTES", 60.0)  # one shift, one retrain
    every_minutes: float = setting("MOODLOOP_DRIFT_EVERY_MINUTES", 10.0)  # the monitor_drift DAG's schedule
    # the drift reports' Evidently workspace
    evidently_workspace: Path = setting("MOODLOOP_EVIDENTLY_WORKSPACE", under_home="evidently")
    evidently_port: int = setting("MOODLOOP_EVIDENTLY_PORT", 8000)  # the Evidently UI (the local stack starts it)
    # The labelling queue (monitoring/labelling.py): when a window drifts and live faces are kept,
    # the faces worth labelling are queued; their answers land as one batch of this many faces
    label_budget: int = setting("MOODLOOP_LABEL_BUDGET", 500)
    label_queue_faces: int = setting("MOODLOOP_LABEL_QUEUE_FACES", 1000)  # the most faces queued at once
    label_strategy: str = setting("MOODLOOP_LABEL_STRATEGY", "loop")  # loop (uncertain and diverse) | random


@dataclasses.dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint_url: str = setting("MOODLOOP_S3_ENDPOINT_URL", "")  # "" = AWS
    access_key: str = setting("MOODLOOP_S3_ACCESS_KEY", "")  # S3 credentials (the local S3 server generates its own)
    secret_key: str = setting("MOODLOOP_S3_SECRET_KEY", "")  # S3 credentials (secret: never printed)
    region: str = setting("MOODLOOP_S3_REGION", "us-east-1")  # S3 region name (SeaweedFS accepts any)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AirflowSettings:
    port: int = setting("MOODLOOP_AIRFLOW_PORT", 8080)  # the local stack's api-server
    url: str = setting("MOODLOOP_AIRFLOW_URL", "")  # REST API v2, where drift triggers retraining; "" = local port
    user: str = setting("MOODLOOP_AIRFLOW_USER", "admin")  # the Airflow user the drift job triggers retrains as
    # its password (generated at the stack's first start, mode 600)
    password_file: Path = setting("MOODLOOP_AIRFLOW_PASSWORD_FILE", under_home="airflow/passwords.json")
    # local: LocalExecutor (one machine). celery: CeleryExecutor, tasks spread over Celery workers
    # through Redis; the local stack starts redis-server and `celery_workers` workers on 127.0.0.1.
    executor: str = setting("MOODLOOP_EXECUTOR", "local")
    # Celery workers the local stack starts with MOODLOOP_EXECUTOR=celery
    celery_workers: int = setting("MOODLOOP_CELERY_WORKERS", 2)
    redis_port: int = setting("MOODLOOP_REDIS_PORT", 6379)  # the local stack's broker
    # This process's name among the Celery workers (the stack sets it per worker): Airflow records
    # it as the task instance's hostname, so one can tell which worker ran what on one machine.
    worker_name: str = setting("MOODLOOP_WORKER_NAME", "")
    # The local stack's warm Python (moodloop/core/warm_python.py): the pipeline env's tasks fork
    # from a process that imported TensorFlow and TFX once, instead of importing them (5-7 s a task)
    warm_python: bool = setting("MOODLOOP_WARM_PYTHON", True)
    warm_python_socket: Path = setting(
        "MOODLOOP_WARM_PYTHON_SOCKET", under_home="stack/warm-python.sock"
    )  # where it listens (mode 600: this user only)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertSettings:
    # Slack-compatible incoming webhook (moodloop/core/alerts.py); "" = no alerts. A secret: it is shown masked.
    webhook_url: str = setting("MOODLOOP_ALERT_WEBHOOK_URL", "")
    timeout_seconds: float = setting("MOODLOOP_ALERT_TIMEOUT_SECONDS", 5.0)  # how long an alert's POST may take


SECTIONS: dict[str, type] = {
    "training": TrainingSettings,
    "gate": GateSettings,
    "serving": ServingSettings,
    "canary": CanarySettings,
    "drift": DriftSettings,
    "s3": S3Settings,
    "airflow": AirflowSettings,
    "alerts": AlertSettings,
}
POSTGRES_ROLE = "moodloop"  # the production profile's database role
POSTGRES_MLMD_DATABASE = "mlmd"  # and its ML Metadata database
# What each profile changes, as variables for what the environment leaves unset (set ones win).
PROFILES: dict[str, dict[str, str]] = {
    "embedded": {},
    "production": {"MOODLOOP_EXECUTOR": "celery", "MOODLOOP_SERVING_REPLICAS": "2"},
}
SECRETS = {
    ("s3", "secret_key"),
    ("serving", "admin_token"),
    ("serving", "feedback_token"),
    ("alerts", "webhook_url"),
    ("", "metadata_url"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    # root of everything the loop writes; the other folders default to places under it
    home: Path = setting("MOODLOOP_HOME", REPO_ROOT / ".moodloop")
    # The local stack's shape (PROFILES): embedded = SQLite, LocalExecutor, the gateway's own
    # backend; production = what docker-compose runs, as processes: PostgreSQL, Celery, replicas
    profile: str = setting("MOODLOOP_PROFILE", "embedded")
    # the production profile's PostgreSQL (Airflow's metadata, Celery's results, ML Metadata):
    # a cluster of the stack's own, listening on 127.0.0.1 on this port
    postgres_port: int = setting("MOODLOOP_POSTGRES_PORT", 5440)
    # where that cluster's files live (as root: a folder the postgres user can reach)
    postgres_dir: Path = setting("MOODLOOP_POSTGRES_DIR", under_home="stack/postgres")
    # the local landing zone: new batches arrive here
    landing_dir: Path = setting("MOODLOOP_LANDING_DIR", under_home="landing")
    # the curated dataset: one TFRecord span per accepted batch
    curated_dir: Path = setting("MOODLOOP_CURATED_DIR", under_home="curated")
    # batches that broke the data contract, whole, each with REPORT.md
    quarantine_dir: Path = setting("MOODLOOP_QUARANTINE_DIR", under_home="quarantine")
    # accepted and duplicate batches after ingest
    archive_dir: Path = setting("MOODLOOP_ARCHIVE_DIR", under_home="archive")
    ingest_dir: Path = setting("MOODLOOP_INGEST_DIR", under_home="ingest")  # ledger and per-batch work folders
    landing_url: str = setting("MOODLOOP_LANDING_URL", "")  # "" = landing_dir; "s3://bucket": landing/ etc. there
    landing_settle_seconds: float = setting("MOODLOOP_LANDING_SETTLE_SECONDS", 10.0)  # no _SUCCESS: ready after
    # The two environments' interpreters: Airflow tasks run TFX with the pipeline env's; the CLI
    # (pipeline env) runs the Great Expectations contract with the orchestration env's.
    pipeline_python: Path = setting("MOODLOOP_PIPELINE_PYTHON", REPO_ROOT / ".venv" / "pipeline" / "bin" / "python")
    orchestration_python: Path = setting(  # the orchestration env's interpreter (Airflow, GX, Evidently)
        "MOODLOOP_ORCHESTRATION_PYTHON", REPO_ROOT / ".venv" / "orchestration" / "bin" / "python"
    )
    # TFX's artifacts (one folder per component run)
    pipeline_root: Path = setting("MOODLOOP_PIPELINE_ROOT", under_home="tfx")
    # ML Metadata's SQLite file (when MOODLOOP_METADATA_URL is unset)
    metadata_path: Path = setting("MOODLOOP_METADATA_PATH", under_home="tfx/metadata.sqlite")
    # ML Metadata in a database every Celery worker reaches (postgresql://user:password@host:port/db
    # or mysql://...); "" = SQLite at metadata_path, enough while every task runs on one machine.
    metadata_url: str = setting("MOODLOOP_METADATA_URL", "")
    pipeline_name: str = setting("MOODLOOP_PIPELINE_NAME", "moodloop")  # the TFX pipeline's name in ML Metadata
    beam_args: tuple[str, ...] = setting("MOODLOOP_BEAM_ARGS", ())  # () = chosen by the faces to process
    # spans from this many faces use the multi-process DirectRunner (4+ cores)
    beam_multiprocess_faces: int = setting("MOODLOOP_BEAM_MULTIPROCESS_FACES", 20000)
    # "embedded" (the gateway's backend, local) | "tfserving" (TFX InfraValidator, Docker)
    infra_validator: str = setting("MOODLOOP_INFRA_VALIDATOR", "embedded")
    max_image_bytes: int = setting("MOODLOOP_MAX_IMAGE_BYTES", 10 * 1024 * 1024)  # input limits, every reader
    # an image declaring more pixels is refused before decoding (bombs)
    max_image_pixels: int = setting("MOODLOOP_MAX_IMAGE_PIXELS", 40_000_000)
    # The rollout contract: TF Serving's models.config (labels stable / canary) and the traffic file
    model_name: str = setting("MOODLOOP_MODEL_NAME", "emotion")
    model_base: Path = setting("MOODLOOP_MODEL_BASE", Path())  # default: <home>/models/<model_name>
    # TF Serving's models.config: the version labels stable / canary
    serving_config: Path = setting("MOODLOOP_SERVING_CONFIG", under_home="serving/models.config")
    traffic_file: Path = setting("MOODLOOP_TRAFFIC_FILE", under_home="serving/traffic.json")  # re-read live
    corrections_dir: Path = setting("MOODLOOP_CORRECTIONS_DIR", under_home="serving/corrections")  # until a batch
    status_dir: Path = setting("MOODLOOP_STATUS_DIR", under_home="status")  # latest gate / drift verdicts
    labelling_dir: Path = setting("MOODLOOP_LABELLING_DIR", under_home="labelling")  # queue and answers
    carbon_country: str = setting("MOODLOOP_CARBON_COUNTRY", "USA")  # ISO 3166 alpha-3: the grid mix for CO2e
    # TF Serving's batching parameters, read by the embedded backend too
    batching_config: Path = setting("MOODLOOP_BATCHING_CONFIG", REPO_ROOT / "serving" / "config" / "batching.config")
    inference_log_url: str = setting("MOODLOOP_INFERENCE_LOG_URL", "")  # folder or s3://; "" = <home>/inference_log
    training: TrainingSettings
    gate: GateSettings
    serving: ServingSettings
    canary: CanarySettings
    drift: DriftSettings
    s3: S3Settings
    airflow: AirflowSettings
    alerts: AlertSettings

    @classmethod
    def from_env(cls, fallback: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read MOODLOOP_* variables; keyword overrides win (used by the CLI, benchmarks and tests):
        a top-level field by name, a section by a dict of its fields, e.g.
        `Settings.from_env(home=tmp, training={"epochs": 2}, serving={"rest_port": 0})`.
        `fallback` holds variables for what the environment leaves unset (the local stack's saved
        ports).

        Paths default to folders under `home`, so overriding `home` moves them all.
        """
        profile = overrides.get("profile") or {**(fallback or {}), **os.environ}.get("MOODLOOP_PROFILE") or "embedded"
        if profile not in PROFILES:
            raise ValueError(f"MOODLOOP_PROFILE={profile!r}: use one of {', '.join(PROFILES)}")
        environ = {**(fallback or {}), **PROFILES[profile], **os.environ}
        home = overrides.pop("home", None) or environ.get("MOODLOOP_HOME") or REPO_ROOT / ".moodloop"
        home = Path(home).expanduser().resolve()
        sections = {name: overrides.pop(name, None) or {} for name in SECTIONS}
        top_level = [f for f in dataclasses.fields(cls) if f.name not in SECTIONS]
        values = _read("settings", top_level, home, overrides, environ)
        values["home"] = home
        if values.get("model_base") in (None, Path()):
            values["model_base"] = home / "models" / str(values["model_name"])
        values["inference_log_url"] = str(values["inference_log_url"] or home / "inference_log")
        for name, section in SECTIONS.items():
            given = sections[name]
            given = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given)
            values[name] = section(**_read(f"{name} settings", dataclasses.fields(section), home, given, environ))
        if not values["airflow"].url:
            values["airflow"] = dataclasses.replace(values["airflow"], url=f"http://127.0.0.1:{values['airflow'].port}")
        return cls(**values)

    @property
    def metadata_location(self) -> str:
        """ML Metadata's store: the database URL when one is set; in the production profile the
        stack's PostgreSQL (the password in a libpq password file, never in the URL); else the
        SQLite file's path."""
        if self.metadata_url:
            return self.metadata_url
        if self.profile == "production":
            return (
                f"postgresql://{POSTGRES_ROLE}@127.0.0.1:{self.postgres_port}/{POSTGRES_MLMD_DATABASE}"
                f"?passfile={self.postgres_passfile}"
            )
        return str(self.metadata_path)

    @property
    def postgres_passfile(self) -> Path:
        """The production profile's libpq password file (mode 600, written by the stack's start)."""
        return self.postgres_dir / "pgpass"

    @property
    def gateway_url(self) -> str:
        """The gateway's REST base URL (TF Serving's :8501), as the Pusher, the canary analysis and
        the stack reach it."""
        return f"http://{self.serving.gateway_host}:{self.serving.rest_port}"

    def as_dict(self) -> dict[str, object]:
        """Settings as JSON-able values, sections nested, secrets masked."""

        def plain(section: str, name: str, value: object) -> object:
            if (section, name) in SECRETS and value:
                return "***"
            return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value

        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECTIONS:
                out[f.name] = {g.name: plain(f.name, g.name, getattr(value, g.name)) for g in dataclasses.fields(value)}
            else:
                out[f.name] = plain("", f.name, value)
        return out

    @staticmethod
    def variables() -> dict[str, str]:
        """Every MOODLOOP_* variable and the field it sets ("section.field" or "field")."""
        names = {f.metadata["env"]: f.name for f in dataclasses.fields(Settings) if f.name not in SECTIONS}
        for section, cls in SECTIONS.items():
            names.update({f.metadata["env"]: f"{section}.{f.name}" for f in dataclasses.fields(cls)})
        return names


def s3_client(settings: Settings):
    """A boto3 S3 client for the endpoint and credentials in the settings (AWS defaults if unset)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3.endpoint_url or None,
        aws_access_key_id=settings.s3.access_key or None,
        aws_secret_access_key=settings.s3.secret_key or None,
        region_name=settings.s3.region,
    )
