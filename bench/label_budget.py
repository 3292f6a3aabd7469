"""How many labels does healing take? The in-process drift drill three ways, on the same seeds:
`batch:4000` (a labelled batch of 4,000 shifted faces lands with the shift: today's behaviour, the
yardstick), `loop:500` (no batch: the loop queues the 500 live faces it wants labelled, uncertainty
x diversity, and the drill answers them in the Label tab's API) and `random:500` (the same with 500
faces drawn at random: the baseline the loop's choice is measured against).

Per run it prints the shifted accuracy after the retrain and the retrain's candidate's own
(`trained`: pushed or refused, on the same faces: what the labels taught); per seed the ratio
loop/batch and the margin loop - random; then their means and spreads. Every run trains with
the product's default settings (as the drill does). Goals (issue 31): loop's shifted accuracy
>= 0.95 of batch's in the same run, and loop above random by a margin larger than its spread.

  .venv/orchestration/bin/python bench/label_budget.py                 # 3 seeds, ~60 minutes on 2 cores
  .venv/orchestration/bin/python bench/label_budget.py --seeds 0 --clean-windows 2

Runs in the orchestration env; training and serving run in the pipeline env. SYNTHETIC faces.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import drift_drill
from moodloop.core.settings import Settings

MODES = ("batch:4000", "loop:500", "random:500")
GOAL_LOOP_OVER_BATCH = 0.95


def one_run(mode: str, seed: int, clean_windows: int, shift: str) -> dict:
    args = argparse.Namespace(
        stack=False,
        faces=4000,
        labels=mode,
        label_pool=0,
        shift_name=shift,
        shift=drift_drill.SHIFTS[shift],
        window=200,
        clean_windows=clean_windows,
        shift_windows=4,
        seed=seed,
    )
    home = Path(tempfile.mkdtemp(prefix=f"moodloop-labels-{mode.replace(':', '')}-{seed}-"))
    started = time.monotonic()
    try:
        figures = drift_drill.drill(args, home)
        figures["candidate_shifted_accuracy"] = candidate_accuracy(home, seed, shift)
        figures["self_training"] = self_training_of(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


# Run in the pipeline env (TensorFlow): the retrain's candidate, pushed or not, on the faces the
# drill measures "after" on (drift_drill.AFTER_FACES shifted faces of the same seed).
SCORE_CANDIDATE = """
import json, sys
import numpy as np, tensorflow as tf
from data import synthetic
from moodloop.core.contracts import OUTPUT_CLASS_IDS, SIGNATURE_PIXELS
model_dir, n, seed, shift = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
pixels, labels = synthetic.generate_arrays(n, seed=seed, shift=synthetic.Shift(**shift))
predict = tf.saved_model.load(model_dir).signatures[SIGNATURE_PIXELS]
chunks = [predict(pixels=tf.constant(pixels[i : i + 250]))[OUTPUT_CLASS_IDS].numpy() for i in range(0, n, 250)]
ids = np.concatenate(chunks)
print(float((ids == labels).mean()))
"""


def candidate_accuracy(home: Path, seed: int, shift: str) -> float | None:
    """The shifted accuracy of what the retrain trained, whatever the gate decided: a refused
    candidate's "after" is the unchanged champion's, which says nothing about what its labels taught.
    None when the drill trained once (no retrain)."""
    models = sorted((home / "tfx" / "Trainer" / "model").glob("*/Format-Serving"), key=lambda p: int(p.parent.name))
    if len(models) < 2:
        return None
    knobs = {k: v for k, v in dataclasses.asdict(drift_drill.SHIFTS[shift]).items() if k != "class_mix"}
    after_seed = drift_drill.SEED_STRIDE * seed + drift_drill.AFTER_SEED
    done = subprocess.run(
        [str(Settings.from_env().pipeline_python), "-c", SCORE_CANDIDATE, str(models[-1]), str(drift_drill.AFTER_FACES)]
        + [str(after_seed), json.dumps(knobs)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def self_training_of(home: Path) -> dict | None:
    """The retrain's self-training report (the Trainer's summary): how many of the kept live faces
    nobody answered were pseudo-labelled; None when it had none (a batch, or self-training off)."""
    runs = (home / "tfx" / "Trainer" / "model_run").glob("*/history.json")
    summaries = sorted(runs, key=lambda p: int(p.parent.name))
    return json.loads(summaries[-1].read_text()).get("self_training") if len(summaries) > 1 else None


def pseudo(report: dict | None) -> str:
    return f"{report['pseudo_labelled']}/{report['unanswered_faces']}" if report else "-"


def spread(values: np.ndarray) -> float:
    """The sample standard deviation over the seeds (nan for one seed)."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="drill seeds (default 0 1 2)")
    parser.add_argument("--clean-windows", type=int, default=3, help="clean windows before the shift (default 3)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), help=f"which runs (default {' '.join(MODES)})")
    parser.add_argument("--shift", choices=sorted(drift_drill.SHIFTS), default="dim")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)

    rows: dict[tuple[int, str], dict] = {}
    for seed in args.seeds:
        for mode in args.modes:
            print(f"\n=== seed {seed}, --labels {mode} ===", flush=True)
            rows[seed, mode] = f = one_run(mode, seed, args.clean_windows, args.shift)
            after = f.get("shifted_accuracy_after")
            print(f"=== after the retrain: {'nothing pushed' if after is None else f'{after:.3f}'}; {f.get('retrain')}")
            if args.json:  # after every run: an hour's figures survive a failure in a later one
                args.json.write_text(json.dumps({f"{s} {m}": v for (s, m), v in rows.items()}, indent=1, default=str))

    print(f"\n== label budget (in-process drill, shift {args.shift}, SYNTHETIC faces) ==")
    # trained: the retrain's candidate on the same shifted faces, pushed or not (what its labels taught)
    columns = (("seed", 4), ("mode", 11), ("flagged", 7), ("clean", 6), ("before", 6), ("trained", 7))
    columns += (("after", 6), ("gate", 9))
    # pseudo: the kept live faces the retrain's self-training pseudo-labelled, of those nobody answered
    print(" ".join(f"{name:>{width}}" for name, width in (*columns, ("on", 7), ("pseudo", 11), ("s", 6))))
    for (seed, mode), f in rows.items():
        gate = (f.get("retrain") or {}).get("gate") or ["-"]
        verdict = next((w for w in ("BLESSED", "REJECTED", "UNDECIDED") if w in gate[0]), "-")
        judged = "current" if any(line.startswith("judged on current traffic") for line in gate) else "all"
        after = f.get("shifted_accuracy_after")
        print(
            f"{seed:>4} {mode:>11} {str(f['windows_to_flag']):>7} {f['clean_accuracy']:6.3f} "
            f"{f['shifted_accuracy_before']:6.3f} {number(f.get('candidate_shifted_accuracy')):>7} {number(after):>6} "
            f"{verdict:>9} {judged:>7} {pseudo(f.get('self_training')):>11} {f['seconds']:6.0f}"
        )

    def after(seed: int, mode: str) -> float:  # nothing pushed ("-"): the champion stays, at its accuracy
        f = rows[seed, mode]
        return f.get("shifted_accuracy_after", f["shifted_accuracy_before"])

    if set(args.modes) != set(MODES):
        return 0  # the comparisons need all three on each seed
    ratios = np.array([after(s, "loop:500") / after(s, "batch:4000") for s in args.seeds])
    margins = np.array([after(s, "loop:500") - after(s, "random:500") for s in args.seeds])
    taught = np.array(
        [
            rows[s, "loop:500"].get("candidate_shifted_accuracy", np.nan)
            - rows[s, "random:500"].get("candidate_shifted_accuracy", np.nan)
            for s in args.seeds
        ],
        dtype=float,
    )
    print(
        f"loop/batch shifted accuracy after: {ratios.mean():.3f} (per seed {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"goal >= {GOAL_LOOP_OVER_BATCH}: {'met' if ratios.min() >= GOAL_LOOP_OVER_BATCH else 'NOT met'} on every seed)"
    )
    print(
        f"loop - random: {100 * margins.mean():+.1f} points of accuracy, spread (sd over seeds) "
        f"{100 * spread(margins):.1f} (per seed {', '.join(f'{100 * m:+.1f}' for m in margins)}; "
        "goal: the margin above its spread: "
        f"{'met' if len(margins) > 1 and margins.mean() > spread(margins) else 'NOT met'})"
    )
    print(
        f"what the labels taught (each candidate, pushed or not), loop - random: "
        f"{100 * np.nanmean(taught):+.1f} points "
        f"(per seed {', '.join(f'{100 * m:+.1f}' for m in taught)})"
    )
    return 0


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
