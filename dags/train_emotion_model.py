"""train_emotion_model: the TFX pipeline, one Airflow task per TFX component.

Scheduled by the `curated_faces` asset; also run by hand (Trigger in the UI, or REST API v2)
with a conf such as {"epochs": 5, "reason": "drift"}. Each component runs in the pipeline env
(TFX cannot share Airflow 3's environment) via components/node_runner.py; all tasks of a run
share one compiled pipeline and one ML Metadata store. A failed task can be cleared and re-run:
components that already completed in the run are skipped. One training at a time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from moodloop.core import alerts, warm_python
from moodloop.core.airflow_assets import CURATED_FACES, PUSHED_MODELS
from moodloop.core.settings import REPO_ROOT, Settings

NODES = json.loads((REPO_ROOT / "components" / "pipeline_nodes.json").read_text())
PYTHON = Settings.from_env().pipeline_python
# Each task runs `python -m MODULE` through the stack's warm Python when it runs (no TensorFlow
# import of its own), else in its own process as before: moodloop/core/warm_python.py
WARM = warm_python.MODULE
RUN_ENV = {"RUN_ID": "{{ run_id }}", "RUN_CONF": "{{ dag_run.conf | tojson }}"}

with DAG(
    dag_id="train_emotion_model",
    schedule=[CURATED_FACES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "reason": Param("manual", type="string", description="why this run: new data, drift, manual ..."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override MOODLOOP_EPOCHS"),
        "model_size": Param(None, type=["null", "string"], enum=[None, "tiny", "small", "medium", "vgg"]),
        "warm_start": Param(None, type=["null", "boolean"], description="start from the stable champion's weights"),
        "tune": Param(None, type=["null", "boolean"], description="run the Tuner first (MOODLOOP_TUNE)"),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15)},
    tags=["moodloop", "training", "tfx"],
    on_failure_callback=alerts.airflow_run_failed,  # one message per failed run (moodloop/core/alerts.py)
    doc_md=__doc__,
) as dag:
    compile_pipeline = BashOperator(
        task_id="compile_pipeline",
        bash_command=f'"{PYTHON}" -m {WARM} components.node_runner compile --run-id "$RUN_ID" --conf "$RUN_CONF"',
        env=RUN_ENV,
        append_env=True,
        cwd=str(REPO_ROOT),
    )
    components = {
        node["id"]: BashOperator(
            task_id=node["id"],
            bash_command=f'"{PYTHON}" -m {WARM} components.node_runner run --run-id "$RUN_ID" --node {node["id"]}',
            env=RUN_ENV,
            append_env=True,
            cwd=str(REPO_ROOT),
            doc_md=f"TFX component `{node['id']}` (upstream: {', '.join(node['upstream']) or 'none'})",
            outlets=[PUSHED_MODELS] if node["id"] == "Pusher" else [],  # starts canary_analysis
        )
        for node in NODES
    }
    for node in NODES:
        compile_pipeline >> components[node["id"]]
        for upstream in node["upstream"]:
            components[upstream] >> components[node["id"]]
