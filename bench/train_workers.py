"""Benchmark: the Trainer's fit on two MultiWorkerMirroredStrategy workers against one process.

Baseline, measured in the same run: `model.fit` in this process (what the Trainer does with
MOODLOOP_TRAIN_WORKERS=1). Then the same model, faces, seed, epochs and global batch on one and on
two worker processes (`components/distributed_training.fit_on_workers`, as the Trainer runs them
with MOODLOOP_TRAIN_WORKERS=1... N), each including its processes' start (TensorFlow's import, the
cluster's set-up). Prints wall time, the ratio to the baseline and the held-out accuracy of each.
On one 2-core machine expect no speed-up: both workers share the cores and add an all-reduce per
step; the point of the workers is more machines.

  .venv/pipeline/bin/python bench/train_workers.py [--faces 6000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from components import distributed_training
from components.model import build_model, learning_rate_schedule
from data import synthetic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model-size", default="small")
    args = parser.parse_args()
    import tf_keras as keras

    pixels, labels = synthetic.generate_arrays(args.faces, seed=21)
    x = pixels[..., None].astype("float32") / 255.0
    split = int(0.8 * len(x))
    faces = {"x_train": x[:split], "y_train": labels[:split], "x_eval": x[split:], "y_eval": labels[split:]}
    spec = {"size": args.model_size, "learning_rate": 0.001, "augment": False}
    fit = {"epochs": args.epochs, "batch_size": 64, "class_weight": {k: 1.0 for k in range(7)}, "seed": 0}
    fit["learning_rate"] = spec["learning_rate"]
    print(f"{os.cpu_count()} cores; {split} SYNTHETIC training faces, {len(x) - split} held out")
    print(f"{args.model_size} model, {args.epochs} epochs, global batch 64")

    keras.utils.set_random_seed(0)
    model = build_model(**spec)
    started = time.perf_counter()
    model.fit(
        faces["x_train"],
        faces["y_train"],
        validation_data=(faces["x_eval"], faces["y_eval"]),
        epochs=args.epochs,
        batch_size=64,
        shuffle=True,
        callbacks=[learning_rate_schedule()],
        verbose=0,
    )
    baseline = time.perf_counter() - started
    accuracy = model.evaluate(faces["x_eval"], faces["y_eval"], verbose=0)[1]
    print(f"in this process (baseline)    {baseline:7.1f} s         held-out accuracy {accuracy:.1%}")
    for workers in (1, 2):
        keras.utils.set_random_seed(0)
        model = build_model(**spec)
        with tempfile.TemporaryDirectory(prefix="moodloop-bench-workers-") as work:
            started = time.perf_counter()
            distributed_training.fit_on_workers(model, spec, faces, fit, workers, work, log=lambda _: None)
            seconds = time.perf_counter() - started
        accuracy = model.evaluate(faces["x_eval"], faces["y_eval"], verbose=0)[1]
        print(
            f"{workers} worker process(es)          {seconds:7.1f} s {seconds / baseline:5.2f}x   "
            f"held-out accuracy {accuracy:.1%}"
        )
    print("ratio > 1: slower than the baseline (the workers share this machine's cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
