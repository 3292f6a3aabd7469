"""Benchmark: a training run's Airflow tasks through the warm Python against in their own process.

Each task of train_emotion_model is `python -m moodloop.core.warm_python components.node_runner
...` in the pipeline env. Baseline, measured in the same run: the same tasks each in its own
process (MOODLOOP_WARM_PYTHON=0, as before the warm Python): they import TensorFlow, TFX and Beam
first. The tasks are real ones of a real run, on a fresh run id each round (a completed component
is skipped in its run): `compile` (the compile_pipeline task), `ImportSchemaGen` and
`champion_resolver` (the components without upstream data). Rounds alternate cold and warm, so a
busy moment hurts both alike.

Prints per task the median wall time of each side and their ratio, and the three together (goal:
>= 5x: most of a run's dozen tasks do little work of their own), and the task processes' CPU time:
the warm side's work happens in the server's fork, so its client must stay near zero CPU (it
only waits).

  .venv/pipeline/bin/python bench/task_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moodloop.core import warm_python
from moodloop.local.stack import WARM_PYTHON_PRELOAD

REPO = Path(__file__).resolve().parent.parent
TASKS = ("compile", "ImportSchemaGen", "champion_resolver")


def task_command(task: str, run_id: str) -> list[str]:
    runner = [sys.executable, "-m", "moodloop.core.warm_python", "components.node_runner"]
    if task == "compile":
        return [*runner, "compile", "--run-id", run_id, "--conf", "{}"]
    return [*runner, "run", "--run-id", run_id, "--node", task]


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """-> (wall seconds, the task process's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[3:])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="moodloop-task-start-"))
    socket_path, server_log = home / "warm.sock", home / "warm-python.log"
    env = {**os.environ, "MOODLOOP_HOME": str(home), "MOODLOOP_WARM_PYTHON_SOCKET": str(socket_path)}
    started = time.perf_counter()
    with server_log.open("wb") as log:  # the server keeps its own copy
        command = warm_python.serve_command(sys.executable, socket_path, WARM_PYTHON_PRELOAD)
        server = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not socket_path.exists():
            if server.poll() is not None:
                raise SystemExit(f"error: the warm Python exited:\n{server_log.read_text()}")
            time.sleep(0.1)
        print(f"warm Python listening after {time.perf_counter() - started:.1f} s (its imports, once)", flush=True)
        seconds = {(task, warm): [] for task in TASKS for warm in (False, True)}
        for round_number in range(args.rounds):
            for warm in (False, True):
                run_id = f"bench-{round_number}-{'warm' if warm else 'cold'}"
                side = {**env, "MOODLOOP_WARM_PYTHON": "1" if warm else "0"}
                for task in TASKS:
                    seconds[(task, warm)].append(timed(task_command(task, run_id), side))
            print(f"round {round_number + 1} of {args.rounds} done", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)

    print(f"\n{'task':20s} {'own process (s)':>16s} {'warm (s)':>10s} {'ratio':>7s} {'CPU own/warm (s)':>18s}")
    for task in TASKS:
        cold = statistics.median(w for w, _ in seconds[(task, False)])
        warm = statistics.median(w for w, _ in seconds[(task, True)])
        cpu_cold = statistics.median(c for _, c in seconds[(task, False)])
        cpu_warm = statistics.median(c for _, c in seconds[(task, True)])
        print(f"{task:20s} {cold:16.2f} {warm:10.2f} {cold / warm:6.1f}x {cpu_cold:8.2f} / {cpu_warm:.2f}")
    total_cold = sum(statistics.median(w for w, _ in seconds[(t, False)]) for t in TASKS)
    total_warm = sum(statistics.median(w for w, _ in seconds[(t, True)]) for t in TASKS)
    print(
        f"the three tasks: {total_cold:.1f} s in their own processes, {total_warm:.1f} s warm: "
        f"{total_cold / total_warm:.1f}x (goal >= 5x); the warm side's task processes only wait "
        "(their CPU column): the work is in the server's fork"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
