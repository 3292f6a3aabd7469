"""The house rule: each top-level folder is one stage and stages meet only through the shared core
(moodloop/core/); the front doors (CLI, local stack) sit above the stages, the core below them;
DAG files never import TensorFlow; nothing imports test code. The contracts are in
pyproject.toml ([tool.importlinter]); this runs them as `make lint` and CI do."""

from __future__ import annotations

import re
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
    # A new core module, named in no contract, that reaches up into a stage: the layers catch it.
    (tmp_path / "moodloop" / "core" / "new_helper.py").write_text("from serving import rest_codec\n")
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 1, result.stdout
    assert "monitoring is not allowed to import serving" in result.stdout
    assert "dags.leaky_dag -> monitoring.leak" in result.stdout  # the chain to TensorFlow, named
    assert "moodloop.core is not allowed to import serving" in result.stdout
    assert "moodloop.core.new_helper -> serving.rest_codec" in result.stdout


def test_tf_use_legacy_keras_is_set_in_one_place():
    """TensorFlow 2.16 reads TF_USE_LEGACY_KERAS when tf.keras is first touched; the training stage's
    package sets it (components/__init__.py) and nothing else does, so no copy can drift."""
    setters = [
        path.relative_to(REPO).as_posix()
        for folder in ("moodloop", "data", "components", "serving", "monitoring", "dags", "bench", "tests")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"^\s*os\.environ\.setdefault\(.TF_USE_LEGACY_KERAS", path.read_text(), re.M)
    ]
    assert setters == ["components/__init__.py"]
