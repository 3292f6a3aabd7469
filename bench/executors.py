"""Benchmark: one training run on Airflow's LocalExecutor (the baseline) against the same run on
two Celery workers with Redis (MOODLOOP_EXECUTOR=celery), both on the local stack.

For each executor: `python -m moodloop.local.stack start --faces N` on a fresh home (a synthetic
batch lands, is ingested, and the asset triggers train_emotion_model), then the first
train_emotion_model run's wall time (Airflow's start to end), its tasks per worker, and `stop`.
Prints both and Celery's time over LocalExecutor's. On one 2-core machine the Celery workers add
a broker hop per task and share the same cores: expect no gain; the point is more machines.

  .venv/orchestration/bin/python bench/executors.py [--faces 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moodloop.core.airflow_api import Airflow
from moodloop.local.s3server import free_port
from moodloop.local.stack import PORT_VARIABLES

TRAINING = {  # a short fit: the orchestration is what is compared, not the model
    "MOODLOOP_EPOCHS": "5",
    "MOODLOOP_EARLY_STOP_PATIENCE": "0",  # exactly 5 epochs in every run: the same work under each executor
    "MOODLOOP_MODEL_SIZE": "tiny",
    "MOODLOOP_AUGMENT": "0",
    "MOODLOOP_LANDING_SETTLE_SECONDS": "2",
}


def seconds(run) -> float:
    start, end = run.start_date, run.end_date
    if isinstance(start, str):
        start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
    return (end - start).total_seconds()


def one_run(executor: str, faces: int, timeout: float) -> tuple[float, Counter]:
    home = Path(tempfile.mkdtemp(prefix=f"moodloop-bench-{executor}-"))
    env = {**os.environ, **TRAINING, "MOODLOOP_HOME": str(home), "MOODLOOP_EXECUTOR": executor}
    env.update({name: str(free_port()) for name in PORT_VARIABLES})
    command = [sys.executable, "-m", "moodloop.local.stack"]
    started = subprocess.run([*command, "start", "--faces", str(faces)], env=env, capture_output=True, text=True)
    try:
        if started.returncode:
            raise RuntimeError(started.stdout + started.stderr)
        password = started.stdout.split("password ", 1)[1].split()[0]
        airflow = Airflow.connect(f"http://127.0.0.1:{env['MOODLOOP_AIRFLOW_PORT']}", "admin", password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = airflow.dag_runs.get_dag_runs("train_emotion_model", limit=5, _request_timeout=30).dag_runs
            done = [r for r in runs if r.state.value in ("success", "failed")]
            if done:
                run = done[0]
                if run.state.value != "success":
                    raise RuntimeError(f"train_emotion_model {run.dag_run_id} failed ({home})")
                tasks = airflow.task_instances.get_task_instances(
                    "train_emotion_model", run.dag_run_id, _request_timeout=30
                ).task_instances
                return seconds(run), Counter((t.hostname or "?").split("@")[0] for t in tasks if t.state == "success")
            time.sleep(5)
        raise TimeoutError(f"no training run ended within {timeout:.0f} s ({home})")
    finally:
        subprocess.run([*command, "stop"], env=env, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=2000, help="faces in the batch that triggers training")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    results = {}
    for executor in ("local", "celery"):
        print(f"-- {executor}: stack up, {args.faces} SYNTHETIC faces, waiting for train_emotion_model", flush=True)
        results[executor] = one_run(executor, args.faces, args.timeout)
        wall, per_worker = results[executor]
        print(f"   {wall:.0f} s; successful tasks per host: {dict(per_worker)}", flush=True)
    local, celery = results["local"][0], results["celery"][0]
    print(f"\ntrain_emotion_model on LocalExecutor (baseline): {local:.0f} s")
    print(f"train_emotion_model on 2 Celery workers + Redis:   {celery:.0f} s = {celery / local:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
