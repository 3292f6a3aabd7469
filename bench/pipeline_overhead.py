"""Benchmark: the whole TFX pipeline against a bare tf_keras fit of the same model.

Baseline (the limit): `model.fit` of the same CNN on the same faces, already decoded and
normalised in memory, with the same epochs and batch size, 80/20 split like ExampleGen's.
Measured: curation + the whole pipeline (ExampleGen ... Pusher) with LocalDagRunner.
Prints each component's wall time and the ratio pipeline / bare fit, at each size.

  .venv/pipeline/bin/python bench/pipeline_overhead.py --sizes 2000 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from data import synthetic  # noqa: E402
from moodloop.settings import Settings  # noqa: E402


def bare_fit_seconds(pixels: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> tuple[float, float]:
    from components.model import build_model, class_weights

    x = pixels[..., None].astype(np.float32) / 255.0
    x = (x - x.mean()) / x.std()
    cut = int(0.8 * len(x))
    # Warm TensorFlow up first (graph tracing, kernel selection): otherwise the first size measured
    # pays it and the later ones do not, and the baseline depends on the order of --sizes.
    warm = build_model(args.model_size, args.learning_rate, augment=args.augment)
    warm.fit(x[:512], labels[:512], validation_data=(x[:64], labels[:64]), epochs=1, batch_size=args.batch_size,
             verbose=0)  # fmt: skip
    model = build_model(args.model_size, args.learning_rate, augment=args.augment)
    started = time.perf_counter()
    history = model.fit(
        x[:cut],
        labels[:cut],
        validation_data=(x[cut:], labels[cut:]),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=0,
        class_weight=class_weights(np.bincount(labels[:cut], minlength=7).tolist()),
    )
    return time.perf_counter() - started, history.history["val_sparse_categorical_accuracy"][-1]


def pipeline_seconds(pixels: np.ndarray, labels: np.ndarray, args: argparse.Namespace, home: Path):
    from components.run import run_pipeline
    from data.curated import write_span

    settings = Settings.from_env(
        home=home,
        epochs=args.epochs,
        model_size=args.model_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        augment=args.augment,
        min_accuracy=0.0,
    )
    started = time.perf_counter()
    write_span(settings.curated_dir, list(pixels), list(labels), source="bench")
    curate = time.perf_counter() - started
    outcome = run_pipeline(settings)
    return curate, outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000], help="faces per run")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model-size", default="small", choices=["tiny", "small", "medium", "vgg"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.003)
    parser.add_argument("--augment", action="store_true", help="train-time augmentation (off by default)")
    args = parser.parse_args()
    print(f"config: model {args.model_size}, {args.epochs} epochs, batch {args.batch_size}, augment {args.augment}")

    rows = []
    for n in args.sizes:
        pixels, labels = synthetic.generate_arrays(n, seed=11)
        fit_s, fit_acc = bare_fit_seconds(pixels, labels, args)
        print(f"\n== {n} faces: bare tf_keras fit {fit_s:.1f} s (val accuracy {fit_acc:.1%})", flush=True)
        with tempfile.TemporaryDirectory(prefix="moodloop-bench-") as home:
            curate_s, outcome = pipeline_seconds(pixels, labels, args, Path(home))
        total = curate_s + outcome.seconds
        print(f"   curate (dedup + TFRecord span): {curate_s:6.1f} s")
        for node, seconds in outcome.component_seconds.items():
            print(f"   {node:<28s} {seconds:6.1f} s")
        accuracy = (outcome.report or {}).get("accuracy")
        print(f"   pipeline total {total:.1f} s (held-out accuracy {accuracy:.1%})" if accuracy else "")
        rows.append((n, fit_s, total))

    print("\nratio = (curate + pipeline wall time) / bare tf_keras fit (baseline), same data, model, epochs")
    for n, fit_s, total in rows:
        print(f"  {n:>6d} faces: pipeline {total:7.1f} s / bare fit {fit_s:6.1f} s = {total / fit_s:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
