"""Training across workers: the Trainer's fit on several processes or devices, the same model.

- `MOODLOOP_TRAIN_WORKERS` > 1: `tf.distribute.MultiWorkerMirroredStrategy`. TensorFlow lets a
  process join a worker cluster only before its first operation, and the Trainer's process has
  long run TensorFlow by then (the Transform graph, the warm start), so `fit_on_workers` starts the
  workers as processes of their own (`python -m components.distributed_training`): TF_CONFIG built
  here (127.0.0.1, free ports; on several machines the same TF_CONFIG with their addresses), the
  training faces and the starting weights (cold or the champion's) handed over in files. Each
  worker builds the same model inside the strategy's scope and fits its shard of every batch; the
  gradients are all-reduced over gRPC, so the workers stay equal, and the chief (worker 0) writes
  the weights back. The Trainer then calibrates and exports them as always.
- One worker and several GPUs on the host: `tf.distribute.MirroredStrategy` in the Trainer's process.
- Otherwise TensorFlow's default strategy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from moodloop.core.settings import REPO_ROOT

SPEC_JSON = "spec.json"
FACES_NPZ = "faces.npz"
INITIAL_WEIGHTS = "initial_weights.npz"
TRAINED_WEIGHTS = "trained_weights.npz"
HISTORY_JSON = "history.json"


def local_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over this host's GPUs when it has several, else the default strategy."""
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _save_weights(path: Path, weights: list[np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, *weights)


def _load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def fit_on_workers(
    model,
    model_spec: dict,
    faces: dict[str, np.ndarray],
    fit_spec: dict,
    workers: int,
    work_dir: str,
    log=print,
    timeout: float = 6 * 3600,
) -> dict[str, list[float]]:
    """Fit `model` on `workers` local worker processes; its weights become the trained ones.
    `model_spec`: build_model's arguments; `faces`: x_train, y_train, x_eval, y_eval; `fit_spec`:
    epochs, batch_size (global), class_weight, seed, learning_rate. -> the chief's history."""
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_JSON).write_text(json.dumps({"model": model_spec, "fit": fit_spec}))
    np.savez(folder / FACES_NPZ, **faces)
    _save_weights(folder / INITIAL_WEIGHTS, model.get_weights())
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    log(f"training on {workers} workers (MultiWorkerMirroredStrategy): {', '.join(addresses)}")
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(addresses, index)}
        output = open(folder / f"worker-{index}.log", "wb")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            [sys.executable, "-m", "components.distributed_training", str(folder)],
            env=env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        processes.append((process, output))
    started = time.perf_counter()
    try:
        # All of them at once, not one after the other: a worker that dies leaves the others
        # waiting for it to join or reduce, so the first failure ends the whole fit.
        while not (failed := _failures(processes, folder)) and any(p.poll() is None for p, _ in processes):
            if time.perf_counter() - started > timeout:
                failed = [f"the workers did not finish within {timeout:.0f} s"]
                break
            time.sleep(0.5)
    finally:
        for process, output in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            output.close()
    if failed:
        tail = (folder / "worker-0.log").read_text(errors="replace")[-3000:]
        raise RuntimeError("multi-worker training failed: " + "; ".join(failed) + f"\nworker 0's log ends:\n{tail}")
    log(f"{workers} workers done in {time.perf_counter() - started:.1f} s; logs in {folder}")
    model.set_weights(_load_weights(folder / TRAINED_WEIGHTS))
    return json.loads((folder / HISTORY_JSON).read_text())


def _failures(processes: list, folder: Path) -> list[str]:
    return [
        f"worker {index} exited {process.returncode} (log: {folder / f'worker-{index}.log'})"
        for index, (process, _) in enumerate(processes)
        if process.poll() not in (None, 0)
    ]


def worker_main(folder: Path) -> int:
    """One worker: joins the cluster TF_CONFIG names, before any other TensorFlow operation."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    chief = resolver.task_id == 0
    from components.model import build_model, training_callbacks

    spec = json.loads((folder / SPEC_JSON).read_text())
    fit = spec["fit"]
    with np.load(folder / FACES_NPZ) as arrays:
        faces = {name: arrays[name] for name in arrays.files}
    import tf_keras as keras

    keras.utils.set_random_seed(int(fit["seed"]))
    with strategy.scope():
        model = build_model(**spec["model"])
        model.set_weights(_load_weights(folder / INITIAL_WEIGHTS))
        model.optimizer.learning_rate.assign(float(fit["learning_rate"]))
    callbacks, max_epochs = training_callbacks(
        int(fit["epochs"]), int(fit.get("max_epochs", fit["epochs"])), int(fit.get("early_stop_patience", 0))
    )
    history = model.fit(
        faces["x_train"],
        faces["y_train"],
        validation_data=(faces["x_eval"], faces["y_eval"]),
        epochs=max_epochs,
        batch_size=int(fit["batch_size"]),
        shuffle=True,
        class_weight={int(k): float(v) for k, v in fit["class_weight"].items()},
        callbacks=callbacks,
        verbose=2 if chief else 0,
    )
    # Every worker reads the weights: reading variables aggregated on read (batch normalisation's
    # moving statistics) is itself an all-reduce, which would wait forever for a worker that skipped it.
    weights = model.get_weights()
    if chief:
        curves = {k: [float(v) for v in values] for k, values in history.history.items()}
        (folder / HISTORY_JSON).write_text(json.dumps(curves))
        _save_weights(folder / f".{TRAINED_WEIGHTS}", weights)
        os.replace(folder / f".{TRAINED_WEIGHTS}", folder / TRAINED_WEIGHTS)
        return 0
    # A worker that leaves while the chief still reduces its last step fails it (the cluster's
    # heartbeat sees it gone): stay until the chief has written the weights.
    deadline = time.monotonic() + 600
    while not (folder / TRAINED_WEIGHTS).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1])))
