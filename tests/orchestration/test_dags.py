"""The DAG folder: imports cleanly, stays thin (no TensorFlow, no TFX), wires what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from moodloop.local.stack import DAG_IDS

DAGS = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
NODES = json.loads((DAGS.parent / "components" / "pipeline_nodes.json").read_text())


def test_dag_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(DAG_IDS) <= set(dagbag.dag_ids)  # every DAG the local stack unpauses


def test_no_dag_file_imports_tensorflow_or_tfx():
    code = (
        "import runpy, sys, pathlib\n"
        f"for f in sorted(pathlib.Path({str(DAGS)!r}).glob('*.py')): runpy.run_path(str(f))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tfx', 'tensorflow_transform'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ, capture_output=True)


def test_train_dag_has_one_task_per_tfx_component_wired_like_the_pipeline(dagbag):
    dag = dagbag.dags["train_emotion_model"]
    assert {t.task_id for t in dag.tasks} == {"compile_pipeline"} | {n["id"] for n in NODES}
    for node in NODES:
        task = dag.get_task(node["id"])
        assert task.upstream_task_ids == {"compile_pipeline", *node["upstream"]}
        assert "-m moodloop.core.warm_python components.node_runner run --run-id" in task.bash_command
        assert f"--node {node['id']}" in task.bash_command
    assert dag.max_active_runs == 1, "one training at a time"
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["curated_faces"]


def test_ingest_dag_branches_to_curate_quarantine_or_skip(dagbag):
    dag = dagbag.dags["ingest_faces"]
    assert dag.get_task("route").downstream_task_ids == {"curate_span", "quarantine_batch", "skip_duplicate"}
    assert [o.name for o in dag.get_task("curate_span").outlets] == ["curated_faces"]
    assert dag.max_active_runs == 1


def test_canary_dags_run_the_analysis_on_a_schedule_and_promote_or_rollback_by_hand(dagbag):
    analysis = dagbag.dags["canary_analysis"]
    assert analysis.schedule is not None and analysis.max_active_runs == 1
    # on its period and at once when the Pusher ends: a canary's first step starts when it is pushed
    assert [asset.name for asset in analysis.timetable.asset_condition.objects] == ["pushed_models"]
    assert [asset.name for asset in dagbag.dags["train_emotion_model"].get_task("Pusher").outlets] == ["pushed_models"]
    # through the stack's warm Python when it runs (moodloop/core/warm_python.py), else on its own
    assert "-m moodloop.core.warm_python monitoring.canary analyze" in analysis.get_task("analyze_canary").bash_command
    control = dagbag.dags["serving_control"]
    assert control.params["action"] == "rollback"  # the safe default
    assert control.params.get_param("action").schema["enum"] == ["promote", "rollback"]
    assert '-m moodloop.cli "$ACTION"' in control.get_task("move_labels").bash_command
