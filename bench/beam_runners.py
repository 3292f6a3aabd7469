"""Benchmark: Beam's DirectRunner in memory (one worker; the baseline) against the multi-process
DirectRunner on every core, on the pipeline's Beam components, on one span of synthetic faces.

Runs the whole pipeline (`components.local_runner.run_pipeline`, a 1-epoch tiny model: the
Trainer is not what is measured) twice on the same curated span, once per runner, and prints each
Beam component's wall time (ImportExampleGen, StatisticsGen, Transform,
Evaluator; the Trainer, the A/B gate and the rest are not Beam) and their sum, as the multi-process time
over the in-memory time. moodloop picks the multi-process runner by itself from
MOODLOOP_BEAM_MULTIPROCESS_FACES (20,000) faces on 4 or more cores; this benchmark is why not on fewer.

  .venv/pipeline/bin/python bench/beam_runners.py [--faces 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moodloop import console

console.quiet_console()  # third-party chatter to each run's log file, before TensorFlow is imported

from data import synthetic  # noqa: E402
from data.curated import write_span  # noqa: E402
from moodloop.settings import IN_MEMORY_BEAM_ARGS, MULTI_PROCESS_BEAM_ARGS, Settings  # noqa: E402

BEAM_COMPONENTS = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")


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
        started = time.perf_counter()
        outcome = run_pipeline(settings)
        seconds = {name: outcome.component_seconds.get(name, float("nan")) for name in BEAM_COMPONENTS}
        seconds["pipeline"] = time.perf_counter() - started
        return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=20000, help="faces in the span (default 20000)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; one span of {args.faces} SYNTHETIC faces; the whole pipeline per runner")
    runs = {}
    for name, beam_args in (("in memory", IN_MEMORY_BEAM_ARGS), ("multi-process", MULTI_PROCESS_BEAM_ARGS)):
        print(f"-- {name}: {' '.join(beam_args)}", flush=True)
        runs[name] = run(args.faces, beam_args)
    base, multi = runs["in memory"], runs["multi-process"]
    print(f"\n{'component':<18s} {'in memory (baseline)':>22s} {'multi-process':>15s} {'ratio':>7s}")
    for name in BEAM_COMPONENTS:
        print(f"{name:<18s} {base[name]:20.1f} s {multi[name]:13.1f} s {multi[name] / base[name]:6.2f}x")
    beam_base = sum(base[n] for n in BEAM_COMPONENTS)
    beam_multi = sum(multi[n] for n in BEAM_COMPONENTS)
    print(f"{'Beam components':<18s} {beam_base:20.1f} s {beam_multi:13.1f} s {beam_multi / beam_base:6.2f}x")
    print(f"{'whole pipeline':<18s} {base['pipeline']:20.1f} s {multi['pipeline']:13.1f} s")
    print("ratio < 1: the multi-process DirectRunner is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
