"""One settings object for every stage: environment variables with local defaults.

Stages receive a `Settings` (or values taken from it) as arguments; nothing else reads the
environment. `moodloop settings` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Beam on a 2-core machine: in-memory DirectRunner, one worker. A user with a Flink or Spark
# cluster passes their own args (e.g. "--runner=FlinkRunner --flink_master=host:8081").
DEFAULT_BEAM_ARGS = "--direct_running_mode=in_memory --direct_num_workers=1"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclasses.dataclass(frozen=True)
class Settings:
    home: Path
    landing_dir: Path
    curated_dir: Path
    quarantine_dir: Path
    archive_dir: Path
    ingest_dir: Path  # ingest ledger and per-batch work folders
    landing_url: str  # "" = the local landing_dir; "s3://bucket" = landing/, archive/, quarantine/ there
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    landing_settle_seconds: float  # a batch without _SUCCESS is ready after this long unchanged
    pipeline_python: Path  # the pipeline env's interpreter, which Airflow tasks run TFX with
    pipeline_root: Path
    metadata_path: Path
    model_name: str
    model_base: Path
    pipeline_name: str
    beam_args: tuple[str, ...]
    # Training
    epochs: int
    batch_size: int
    model_size: str
    learning_rate: float
    augment: bool  # train-time flips/shifts/zoom: on for real data; off speeds up tiny test runs
    seed: int  # the Trainer's random seed: the same faces and seed train the same model
    span_window: int  # train on the newest N spans; 0 = all
    # Warm start: a retrain starts from the stable champion's weights when the architecture matches
    warm_start: bool
    warm_epochs_fraction: float  # a warm retrain runs this share of `epochs` (at least one)
    warm_learning_rate_factor: float  # and fine-tunes at learning_rate x this
    tune: bool  # a TFX Tuner (KerasTuner random search) before the Trainer; its best values train the model
    tune_trials: int
    tune_epochs: int  # per trial
    # Evaluator thresholds (overall slice) and the offline A/B gate
    min_accuracy: float
    max_accuracy_drop: float
    gate_alpha: float  # false-promotion level of the gate's superiority test
    gate_min_examples: int  # fewer held-out faces: the gate does not decide
    gate_max_class_recall_drop: float
    gate_bootstrap: int
    infra_validator: str  # "embedded" (gateway's backend, local) | "tfserving" (TFX InfraValidator, Docker)
    # Input limits
    max_image_bytes: int
    max_image_pixels: int
    # Serving (gateway and TF Serving share models.config; traffic.json holds the canary share)
    serving_backend: str  # "embedded" (load SavedModels in-process) | "tfserving" (forward over gRPC)
    tfserving_target: str  # host:port of TF Serving's gRPC port, for the tfserving backend
    serving_config: Path  # TF Serving's models.config (labels stable / canary, version policy)
    batching_config: Path  # TF Serving's batching parameters file
    traffic_file: Path  # {"canary_share": 0.1}: the gateway's traffic split, re-read while running
    canary_share: float  # used while traffic_file does not exist
    gateway_host: str
    rest_port: int
    grpc_port: int
    poll_seconds: float  # how often the gateway re-reads models.config and scans the base path
    request_timeout_seconds: float
    max_upload_bytes: int  # photo / video / JSON body limit
    face_detector: str  # face analysis: "mtcnn" (eye landmarks, faces aligned) | "haar" (OpenCV cascade)
    min_confidence: float  # face analysis: a face whose top probability is below this is "uncertain"
    admin_token: str  # bearer token for reload / promote / rollback; "" disables those endpoints
    inference_log_url: str  # local folder or s3://bucket/prefix; Parquet partitioned by hour
    log_buffer_records: int  # bounded: overflow is counted in a metric, never blocks a request
    log_flush_seconds: float
    # Canary analysis (monitoring/canary.py)
    canary_steps: tuple[float, ...]  # canary share per step; after the last step: promote
    canary_bake_seconds: float
    canary_min_requests: int  # per side and step, before judging
    canary_min_labels: int  # per side, for the accuracy test on feedback labels
    canary_alpha: float
    canary_max_accuracy_drop: float
    canary_every_minutes: float  # the canary_analysis DAG's schedule
    # Drift monitoring (monitoring/drift.py)
    drift_window_records: int  # > 0: windows of this many records; 0: all new records once drift_min_records
    drift_min_records: int
    drift_share: float  # share of monitored columns that must drift to call it drift
    drift_cooldown_minutes: float  # one shift, one retrain
    drift_every_minutes: float  # the monitor_drift DAG's schedule
    evidently_workspace: Path
    evidently_port: int
    airflow_port: int  # the local stack's api-server
    airflow_url: str  # where drift triggers retraining (REST API v2)
    airflow_user: str
    airflow_password_file: Path

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read MOODLOOP_* variables; keyword overrides win (used by the CLI and tests).

        Paths default to folders under `home`, so overriding `home` moves them all.
        """
        home = Path(str(overrides.pop("home", None) or _env("MOODLOOP_HOME", str(REPO_ROOT / ".moodloop"))))
        home = home.expanduser().resolve()
        model_name = _env("MOODLOOP_MODEL_NAME", "emotion")
        values: dict[str, object] = dict(
            home=home,
            landing_dir=Path(_env("MOODLOOP_LANDING_DIR", str(home / "landing"))),
            curated_dir=Path(_env("MOODLOOP_CURATED_DIR", str(home / "curated"))),
            quarantine_dir=Path(_env("MOODLOOP_QUARANTINE_DIR", str(home / "quarantine"))),
            archive_dir=Path(_env("MOODLOOP_ARCHIVE_DIR", str(home / "archive"))),
            ingest_dir=Path(_env("MOODLOOP_INGEST_DIR", str(home / "ingest"))),
            landing_url=_env("MOODLOOP_LANDING_URL", ""),
            s3_endpoint_url=_env("MOODLOOP_S3_ENDPOINT_URL", ""),
            s3_access_key=_env("MOODLOOP_S3_ACCESS_KEY", ""),
            s3_secret_key=_env("MOODLOOP_S3_SECRET_KEY", ""),
            s3_region=_env("MOODLOOP_S3_REGION", "us-east-1"),
            landing_settle_seconds=float(_env("MOODLOOP_LANDING_SETTLE_SECONDS", "10")),
            pipeline_python=Path(
                _env("MOODLOOP_PIPELINE_PYTHON", str(REPO_ROOT / ".venv" / "pipeline" / "bin" / "python"))
            ),
            pipeline_root=Path(_env("MOODLOOP_PIPELINE_ROOT", str(home / "tfx"))),
            metadata_path=Path(_env("MOODLOOP_METADATA_PATH", str(home / "tfx" / "metadata.sqlite"))),
            model_name=model_name,
            model_base=Path(_env("MOODLOOP_MODEL_BASE", str(home / "models" / model_name))),
            pipeline_name=_env("MOODLOOP_PIPELINE_NAME", "moodloop"),
            beam_args=tuple(shlex.split(_env("MOODLOOP_BEAM_ARGS", DEFAULT_BEAM_ARGS))),
            epochs=int(_env("MOODLOOP_EPOCHS", "10")),
            batch_size=int(_env("MOODLOOP_BATCH_SIZE", "64")),
            model_size=_env("MOODLOOP_MODEL_SIZE", "small"),
            learning_rate=float(_env("MOODLOOP_LEARNING_RATE", "0.001")),
            augment=_env("MOODLOOP_AUGMENT", "1").lower() not in ("0", "false", "no"),
            seed=int(_env("MOODLOOP_SEED", "0")),
            span_window=int(_env("MOODLOOP_SPAN_WINDOW", "0")),
            warm_start=_env("MOODLOOP_WARM_START", "1").lower() not in ("0", "false", "no"),
            warm_epochs_fraction=float(_env("MOODLOOP_WARM_EPOCHS_FRACTION", "0.2")),
            warm_learning_rate_factor=float(_env("MOODLOOP_WARM_LEARNING_RATE_FACTOR", "0.3")),
            tune=_env("MOODLOOP_TUNE", "0").lower() not in ("0", "false", "no", ""),
            tune_trials=int(_env("MOODLOOP_TUNE_TRIALS", "6")),
            tune_epochs=int(_env("MOODLOOP_TUNE_EPOCHS", "3")),
            min_accuracy=float(_env("MOODLOOP_MIN_ACCURACY", "0.40")),
            max_accuracy_drop=float(_env("MOODLOOP_MAX_ACCURACY_DROP", "0.01")),
            gate_alpha=float(_env("MOODLOOP_GATE_ALPHA", "0.05")),
            gate_min_examples=int(_env("MOODLOOP_GATE_MIN_EXAMPLES", "200")),
            gate_max_class_recall_drop=float(_env("MOODLOOP_GATE_MAX_CLASS_RECALL_DROP", "0.05")),
            gate_bootstrap=int(_env("MOODLOOP_GATE_BOOTSTRAP", "1000")),
            infra_validator=_env("MOODLOOP_INFRA_VALIDATOR", "embedded"),
            max_image_bytes=int(_env("MOODLOOP_MAX_IMAGE_BYTES", str(10 * 1024 * 1024))),
            max_image_pixels=int(_env("MOODLOOP_MAX_IMAGE_PIXELS", str(40_000_000))),
            serving_backend=_env("MOODLOOP_SERVING_BACKEND", "embedded"),
            tfserving_target=_env("MOODLOOP_TFSERVING_TARGET", "127.0.0.1:8500"),
            serving_config=Path(_env("MOODLOOP_SERVING_CONFIG", str(home / "serving" / "models.config"))),
            batching_config=Path(
                _env("MOODLOOP_BATCHING_CONFIG", str(REPO_ROOT / "serving" / "config" / "batching.config"))
            ),
            traffic_file=Path(_env("MOODLOOP_TRAFFIC_FILE", str(home / "serving" / "traffic.json"))),
            canary_share=float(_env("MOODLOOP_CANARY_SHARE", "0.1")),
            gateway_host=_env("MOODLOOP_GATEWAY_HOST", "127.0.0.1"),
            rest_port=int(_env("MOODLOOP_REST_PORT", "8501")),
            grpc_port=int(_env("MOODLOOP_GRPC_PORT", "8500")),
            poll_seconds=float(_env("MOODLOOP_SERVING_POLL_SECONDS", "2")),
            request_timeout_seconds=float(_env("MOODLOOP_REQUEST_TIMEOUT_SECONDS", "10")),
            max_upload_bytes=int(_env("MOODLOOP_MAX_UPLOAD_BYTES", str(32 * 1024 * 1024))),
            face_detector=_env("MOODLOOP_FACE_DETECTOR", "mtcnn"),
            min_confidence=float(_env("MOODLOOP_MIN_CONFIDENCE", "0.5")),
            admin_token=_env("MOODLOOP_ADMIN_TOKEN", ""),
            inference_log_url=_env("MOODLOOP_INFERENCE_LOG_URL", str(home / "inference_log")),
            log_buffer_records=int(_env("MOODLOOP_LOG_BUFFER_RECORDS", "20000")),
            log_flush_seconds=float(_env("MOODLOOP_LOG_FLUSH_SECONDS", "5")),
            canary_steps=tuple(float(x) for x in _env("MOODLOOP_CANARY_STEPS", "0.1,0.5,1.0").split(",")),
            canary_bake_seconds=float(_env("MOODLOOP_CANARY_BAKE_SECONDS", "600")),
            canary_min_requests=int(_env("MOODLOOP_CANARY_MIN_REQUESTS", "200")),
            canary_min_labels=int(_env("MOODLOOP_CANARY_MIN_LABELS", "100")),
            canary_alpha=float(_env("MOODLOOP_CANARY_ALPHA", "0.05")),
            canary_max_accuracy_drop=float(_env("MOODLOOP_CANARY_MAX_ACCURACY_DROP", "0.02")),
            canary_every_minutes=float(_env("MOODLOOP_CANARY_EVERY_MINUTES", "5")),
            drift_window_records=int(_env("MOODLOOP_DRIFT_WINDOW_RECORDS", "0")),
            drift_min_records=int(_env("MOODLOOP_DRIFT_MIN_RECORDS", "200")),
            drift_share=float(_env("MOODLOOP_DRIFT_SHARE", "0.3")),
            drift_cooldown_minutes=float(_env("MOODLOOP_DRIFT_COOLDOWN_MINUTES", "60")),
            drift_every_minutes=float(_env("MOODLOOP_DRIFT_EVERY_MINUTES", "10")),
            evidently_workspace=Path(_env("MOODLOOP_EVIDENTLY_WORKSPACE", str(home / "evidently"))),
            evidently_port=int(_env("MOODLOOP_EVIDENTLY_PORT", "8000")),
            airflow_port=int(_env("MOODLOOP_AIRFLOW_PORT", "8080")),
            airflow_url=_env("MOODLOOP_AIRFLOW_URL", f"http://127.0.0.1:{_env('MOODLOOP_AIRFLOW_PORT', '8080')}"),
            airflow_user=_env("MOODLOOP_AIRFLOW_USER", "admin"),
            airflow_password_file=Path(
                _env("MOODLOOP_AIRFLOW_PASSWORD_FILE", str(home / "airflow" / "passwords.json"))
            ),
        )
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def gateway_url(self) -> str:
        """The gateway's REST base URL (TF Serving's :8501), as the Pusher, the canary analysis and
        the stack reach it."""
        return f"http://{self.gateway_host}:{self.rest_port}"

    def as_dict(self) -> dict[str, object]:
        """Settings as JSON-able values, secrets masked."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("s3_secret_key", "admin_token") and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        return out


def s3_client(settings: Settings):
    """A boto3 S3 client for the endpoint and credentials in the settings (AWS defaults if unset)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        aws_access_key_id=settings.s3_access_key or None,
        aws_secret_access_key=settings.s3_secret_key or None,
        region_name=settings.s3_region,
    )
