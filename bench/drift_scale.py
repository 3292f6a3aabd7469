"""Benchmark: a drift window's cost depends on the window, not on how much was logged before it.

For each window size, the drift job (`monitoring.drift.run_window`: read the window, data-quality
checks, Evidently report, verdict) runs in a process of its own twice, on two inference logs:
- the baseline: a log that holds only the window's records;
- measured: the same window after `--old` records already logged (10 million by default, in hour
  partitions before it, as the gateway writes them), with the job's position (drift_state.json)
  at the window's start.
Prints wall seconds and peak resident memory of each, the ratio measured / baseline, and the goals
(issue 15: 10k records in <= 5 s and <= 500 MB; 1M records in <= 30 s and <= 2 GB).

  .venv/orchestration/bin/python bench/drift_scale.py [--old 10000000] [--windows 10000 1000000]

The records are synthetic (random probabilities, image properties and embeddings in the
inference-log schema); the logs are written under a temporary folder and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moodloop.core.contracts import EMOTIONS, LOG_PREDICTIONS, LOG_PROBABILITY_COLUMNS
from moodloop.core.log_records import PREDICTION_SCHEMA

REPO = Path(__file__).resolve().parent.parent
FILE_RECORDS = 50_000
WINDOW_START = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
REFERENCE_PROFILE = "assets.extra/reference_profile.parquet"  # monitoring/drift.py reads it per version


def records(count: int, rng: np.random.Generator) -> dict[str, np.ndarray | list]:
    """Columns of `count` plausible prediction records (timestamps filled in by the caller)."""
    probabilities = rng.dirichlet(np.ones(len(EMOTIONS)), size=count)
    columns: dict[str, np.ndarray | list] = {}
    for field in PREDICTION_SCHEMA:
        if field.name in LOG_PROBABILITY_COLUMNS:
            columns[field.name] = probabilities[:, LOG_PROBABILITY_COLUMNS.index(field.name)]
        elif pa.types.is_floating(field.type):
            columns[field.name] = rng.random(count)
        elif pa.types.is_integer(field.type):
            columns[field.name] = np.full(count, 48 if field.name in ("width", "height") else 1)
    top = probabilities.argmax(axis=1)
    columns.update(
        predicted_class=np.array(EMOTIONS)[top],
        confidence=probabilities.max(axis=1),
        model_label=np.full(count, "stable"),
        model_name=np.full(count, "emotion"),
        api=np.full(count, "rest"),
        signature=np.full(count, "serving_default"),
        client_id=np.full(count, ""),
        latency_ms=rng.random(count) * 5,
    )
    return columns


def write_records(log: Path, start: datetime, count: int, seconds_apart: float, rng: np.random.Generator) -> None:
    """`count` records from `start` on, in files of FILE_RECORDS under hour partitions."""
    template = records(FILE_RECORDS, rng)
    written = 0
    while written < count:
        size = min(FILE_RECORDS, count - written)
        first = start + timedelta(seconds=written * seconds_apart)
        stamps = np.datetime64(first.replace(tzinfo=None), "ms") + (np.arange(size) * seconds_apart * 1000).astype(
            "timedelta64[ms]"
        )
        columns = {name: values[:size] for name, values in template.items()}
        columns["timestamp"] = pa.array(stamps, pa.timestamp("ms", tz="UTC"))
        columns["request_id"] = [f"r{written + i}" for i in range(size)]
        columns["instance"] = np.zeros(size, np.int32)
        table = pa.table({field.name: columns[field.name] for field in PREDICTION_SCHEMA}, schema=PREDICTION_SCHEMA)
        folder = log / LOG_PREDICTIONS / first.strftime("date=%Y-%m-%d/hour=%H")
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{written:012d}.parquet")
        written += size


def home_with(work: Path, name: str, window: int, old: int, rng: np.random.Generator) -> Path:
    home = work / name
    reference = home / "models" / "emotion" / "1" / REFERENCE_PROFILE
    reference.parent.mkdir(parents=True)
    profile = pa.table(records(2000, rng)).append_column(
        "label", pa.array(np.array(EMOTIONS)[rng.integers(0, 7, 2000)])
    )
    pq.write_table(profile, reference)
    log = home / "inference_log"
    if old:  # before the window, ten per second, ending where the window starts
        write_records(log, WINDOW_START - timedelta(seconds=old / 10), old, 0.1, rng)
    write_records(log, WINDOW_START + timedelta(milliseconds=1), window, 0.01, rng)
    state = home / "monitoring" / "drift_state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"last_end": str(WINDOW_START)}))
    return home


JOB = """
import sys, time
from monitoring.drift import run_window
from moodloop.core.settings import Settings
started = time.perf_counter()
result = run_window(Settings.from_env(), retrain=lambda settings, conf: {"benchmark": "no retrain"})
print("RESULT", time.perf_counter() - started, result.outcome, result.window["records"], flush=True)
"""


def run_job(home: Path, window: int) -> tuple[float, float, str]:
    """-> (seconds in run_window, peak resident MB of the whole process, outcome)."""
    env = {
        **os.environ,
        "MOODLOOP_HOME": str(home),
        "MOODLOOP_MODEL_BASE": str(home / "models" / "emotion"),
        "MOODLOOP_INFERENCE_LOG_URL": str(home / "inference_log"),
        "MOODLOOP_DRIFT_WINDOW_RECORDS": str(window),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", JOB], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) or "RESULT" not in output:
        raise RuntimeError(f"the drift job failed:\n{output[-3000:]}")
    seconds, outcome, records_read = output.rsplit("RESULT", 1)[1].split()[:3]
    if int(records_read) != window:
        raise RuntimeError(f"the window held {records_read} records, not {window}")
    return float(seconds), usage.ru_maxrss / 1024, outcome


GOALS = {10_000: (5.0, 500.0), 1_000_000: (30.0, 2000.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=int, default=10_000_000, help="records logged before the window")
    parser.add_argument("--windows", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moodloop-bench-drift-"))
    rng = np.random.default_rng(0)
    try:
        for window in args.windows:
            started = time.perf_counter()
            fresh = home_with(work, f"fresh-{window}", window, 0, rng)
            aged = home_with(work, f"aged-{window}", window, args.old, rng)
            size = sum(f.stat().st_size for f in (aged / "inference_log").rglob("*.parquet")) / 2**30
            print(
                f"window of {window:,} records: logs written in {time.perf_counter() - started:.0f} s "
                f"({args.old:,} records before it: {size:.1f} GiB)"
            )
            base_seconds, base_mb, _ = run_job(fresh, window)
            seconds, mb, outcome = run_job(aged, window)
            goal_seconds, goal_mb = GOALS.get(window, (float("nan"), float("nan")))
            print(
                f"  baseline (only the window logged): {base_seconds:6.1f} s, {base_mb:6.0f} MB peak\n"
                f"  after {args.old:,} records:       {seconds:6.1f} s, {mb:6.0f} MB peak ({outcome})\n"
                f"  ratio to the baseline: {seconds / base_seconds:.2f}x time, {mb / base_mb:.2f}x memory; "
                f"goal <= {goal_seconds:g} s and <= {goal_mb:g} MB"
            )
            shutil.rmtree(fresh)
            shutil.rmtree(aged)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
