"""Orchestration-env fixtures: an isolated Airflow home (SQLite) and moodloop home per session.

Airflow reads its configuration when first imported, so the environment is set here, before
any test module imports it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION = Path(tempfile.mkdtemp(prefix="moodloop-orch-tests-"))
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)  # the session's Airflow and moodloop homes
os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "MOODLOOP_HOME": str(_SESSION / "home"),
        "MOODLOOP_LANDING_SETTLE_SECONDS": "0",
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _SESSION / "airflow"


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


@pytest.fixture
def moodloop_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MOODLOOP_HOME", str(home))
    return home
