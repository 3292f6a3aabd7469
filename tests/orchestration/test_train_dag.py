"""ingest -> train end to end through Airflow: dag.test() runs every TFX component as its own
task in the pipeline env and a version is pushed; a finished component re-run is skipped."""

from __future__ import annotations

import json
import subprocess

import pytest

from data import landing, synthetic

pytestmark = pytest.mark.pipeline


def test_ingest_then_train_pushes_a_model_one_task_per_component(dagbag, moodloop_home, fast_env):
    # Airflow's wiring is the subject: the floor is one the model cannot miss (tests/conftest.py WIRING).
    settings = fast_env(moodloop_home, MOODLOOP_MIN_ACCURACY="0.0")
    pixels, labels = synthetic.generate_arrays(2000, seed=1)
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), settings.landing_dir / "batch-1" / "fer2013.csv")

    ingest_run = dagbag.dags["ingest_faces"].test(run_conf={"batch": "batch-1"})
    assert ingest_run.state == "success"

    train_dag = dagbag.dags["train_emotion_model"]
    run = train_dag.test(run_conf={"reason": "test"})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == {task.task_id: "success" for task in train_dag.tasks}
    versions = [p.name for p in settings.model_base.iterdir() if p.name.isdigit()]
    assert len(versions) == 1 and (settings.model_base / versions[0] / "saved_model.pb").exists()
    assert (settings.model_base / versions[0] / "assets.extra" / "edge" / "edge.json").exists()  # EdgeExporter
    (energy_file,) = (settings.pipeline_root / "energy").glob("*/Trainer.json")
    energy = json.loads(energy_file.read_text())
    assert energy["joules"] > 0 and energy["method"]  # each task measures its component (moodloop/energy.py)

    # A cleared task of a finished run re-runs its component's process, which finds the
    # execution COMPLETE in ML Metadata and skips it: nothing is redone, nothing is re-pushed.
    rerun = subprocess.run(
        [
            str(settings.pipeline_python),
            "-m",
            "components.node_runner",
            "run",
            "--run-id",
            run.run_id,
            "--node",
            "Pusher",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already completed" in rerun.stdout
    assert [p.name for p in settings.model_base.iterdir() if p.name.isdigit()] == versions
