"""The house rule: each top-level folder is one stage and stages meet only through moodloop/'s
shared core; DAG files never import TensorFlow; nothing imports test code. The contracts are
in pyproject.toml ([tool.importlinter]); this runs them as `make lint` and CI do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_stages_meet_only_through_the_shared_core():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_a_stage_reaching_into_another_is_caught(tmp_path):
    # The contracts on a copy of the stages with one forbidden import added: the check can fail.
    import shutil

    for folder in ("moodloop", "data", "components", "serving", "monitoring", "dags", "bench", "tests"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    leak = tmp_path / "monitoring" / "leak.py"
    leak.write_text("from serving import rest_codec\nimport tensorflow\n")
    (tmp_path / "dags" / "leaky_dag.py").write_text("from monitoring import leak\n")
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 1, result.stdout
    assert "monitoring is not allowed to import serving" in result.stdout
    assert "dags.leaky_dag -> monitoring.leak" in result.stdout  # the chain to TensorFlow, named
