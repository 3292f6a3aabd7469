"""Benchmark: the pipeline's Beam components under three sets of Beam args, on one span of
synthetic faces. The baseline is TFX's behaviour with plain DirectRunner args (`tfx defaults`:
Beam's dill pickler, and TFX repackaging itself into an sdist before every Beam component);
`in memory` is moodloop's default (the same runner, cloudpickle, the workers' dependencies named so
that TFX packages nothing: moodloop/core/settings.py LOCAL_WORKER_ARGS); `multi-process` is the
DirectRunner on every core, which moodloop picks by itself from MOODLOOP_BEAM_MULTIPROCESS_FACES
(20,000) faces on 4 or more cores (this benchmark is why not on fewer).

Runs the whole pipeline (`components.local_runner.run_pipeline`, a 1-epoch tiny model: the
Trainer is not what is measured) per arm and repeat, the arms interleaved, and prints each Beam
component's wall time (ImportExampleGen, StatisticsGen, Transform, Evaluator; the median over
repeats), their sum and the process's CPU seconds (children included), as ratios to the baseline.

  .venv/pipeline/bin/python bench/beam_runners.py [--faces 20000] [--repeats 1] [--arms ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moodloop.core import console

console.quiet_console()  # third-party chatter to each run's log file, before TensorFlow is imported

from data import synthetic  # noqa: E402
from data.curated import write_span  # noqa: E402
from moodloop.core.settings import IN_MEMORY_BEAM_ARGS, MULTI_PROCESS_BEAM_ARGS, Settings  # noqa: E402

BEAM_COMPONENTS = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")
ARMS = {
    "tfx defaults": ("--direct_running_mode=in_memory", "--direct_num_workers=1"),
    "in memory": IN_MEMORY_BEAM_ARGS,
    "multi-process": MULTI_PROCESS_BEAM_ARGS,
}


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (TFX's sdist builds)."""
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def run(faces: int, beam_args: tuple[str, ...]) -> dict[str, float]:
    from components.local_runner import run_pipeline

    pixels, labels = synthetic.generate_arrays(faces, seed=5)
    with tempfile.TemporaryDirectory(prefix="moodloop-bench-beam-") as home:
        settings = Settings.from_env(
            home=Path(home),
            beam_args=beam_args,
            training={"epochs": 1, "model_size": "tiny", "augment": False},
            gate={"min_accuracy": 0.0},
        )
        write_span(settings.curated_dir, list(pixels), list(labels), source="bench")
        started, cpu = time.perf_counter(), cpu_seconds()
        outcome = run_pipeline(settings)
        seconds = {name: outcome.component_seconds.get(name, float("nan")) for name in BEAM_COMPONENTS}
        seconds["pipeline"] = time.perf_counter() - started
        seconds["CPU"] = cpu_seconds() - cpu
        return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=20000, help="faces in the span (default 20000)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm, interleaved (default 1)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the first is the baseline")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; one span of {args.faces} SYNTHETIC faces; the whole pipeline per arm and repeat")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.arms}
    for repeat in range(args.repeats):
        for name in args.arms:
            print(f"-- {name} ({repeat + 1}/{args.repeats}): {' '.join(ARMS[name])}", flush=True)
            runs[name].append(run(args.faces, ARMS[name]))
    median = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    for seconds in median.values():
        seconds["Beam components"] = sum(seconds[n] for n in BEAM_COMPONENTS)
    baseline = args.arms[0]
    print(f"\nmedian of {args.repeats}; baseline: {baseline}")
    print(f"{'':<18s}" + "".join(f"{name:>24s}" for name in args.arms))
    for key in (*BEAM_COMPONENTS, "Beam components", "pipeline", "CPU"):
        base = median[baseline][key]
        cells = [f"{median[name][key]:9.1f} s ({median[name][key] / base:4.2f}x)" for name in args.arms]
        print(f"{key + (' (wall)' if key == 'pipeline' else ''):<18s}" + "".join(f"{c:>24s}" for c in cells))
    print("ratio < 1: faster than the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
