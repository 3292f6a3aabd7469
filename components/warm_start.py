"""Warm start: a retrain begins from the champion's weights instead of a random initialisation.

The champion is the version labelled `stable` in models.config (what users are served), the
same model the A/B gate compares against. Every exported model carries its Keras weights and an
architecture fingerprint in `assets.extra/` (TF Serving ignores that folder apart from its
warm-up records); a retrain loads them only when the fingerprint matches its own model, so a
changed architecture (another MOODLOOP_MODEL_SIZE, an adopted model) trains cold, and says why.

A warm start also needs a champion that still fits the data (`still_fits`): after a shift in the
faces, a short fine-tune from the old weights ends below a cold retrain, and the A/B gate then
rightly refuses it (measured in the drift drill: warm 78.7-82.4 % against cold 84.9 %).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from moodloop.core.contracts import REFERENCE_PROFILE

WARM_START_FILE = os.path.join("assets.extra", "warm_start.npz")


def architecture_fingerprint(model) -> str:
    """Layer types and weight shapes in order: what must match for the weights to fit. Layer names
    are left out (Keras numbers them per process, so they differ between identical models)."""
    layers = [[type(layer).__name__, [list(w.shape) for w in layer.weights]] for layer in model.layers]
    return hashlib.sha256(json.dumps(layers).encode()).hexdigest()[:16]


def save_weights(model, export_dir: str) -> str:
    path = os.path.join(export_dir, WARM_START_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"w{i:03d}": w for i, w in enumerate(model.get_weights())}
    with open(path, "wb") as fh:  # np.savez appends ".npz" to a path; a file object keeps the name
        np.savez(fh, fingerprint=np.array(architecture_fingerprint(model)), model_name=np.array(model.name), **arrays)
    return path


@dataclasses.dataclass(frozen=True)
class WarmStart:
    warm: bool
    reason: str
    champion: str | None = None  # the champion's model directory

    def summary(self) -> str:
        return f"{'WARM start' if self.warm else 'COLD start'}: {self.reason}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def warm_start(model, champion_dir: str | None) -> WarmStart:
    """Load the champion's weights into `model` when they fit; otherwise leave it untouched."""
    if champion_dir is None:
        return WarmStart(False, "no champion yet (no stable version)")
    path = os.path.join(champion_dir, WARM_START_FILE)
    if not os.path.exists(path):
        return WarmStart(False, f"the champion {champion_dir} carries no weights to start from", champion_dir)
    with np.load(path) as saved:
        fingerprint = str(saved["fingerprint"])
        if fingerprint != architecture_fingerprint(model):
            return WarmStart(
                False,
                f"the champion's architecture ({saved['model_name']}) differs from {model.name}",
                champion_dir,
            )
        weights = [saved[key] for key in sorted(k for k in saved.files if k.startswith("w"))]
    model.set_weights(weights)
    return WarmStart(True, f"from the champion's weights ({champion_dir})", champion_dir)


def reference_accuracy(champion_dir: str) -> float | None:
    """The champion's accuracy on its own held-out faces when it was trained: its reference profile
    (one row per held-out face, with its label and the predicted class). None when it has none."""
    path = os.path.join(champion_dir, REFERENCE_PROFILE)
    if not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["label", "predicted_class"])
    pairs = [
        (label, predicted)
        for label, predicted in zip(table["label"].to_pylist(), table["predicted_class"].to_pylist(), strict=True)
        if label is not None
    ]
    return sum(label == predicted for label, predicted in pairs) / len(pairs) if pairs else None


def still_fits(model, images: np.ndarray, labels: np.ndarray, warm: WarmStart, max_drop: float) -> WarmStart:
    """Keep a warm start only while the champion still fits today's faces: its weights, before any
    training step, must score on today's held-out faces within `max_drop` of what the champion
    scored on its own when it was trained. Otherwise the data has moved and the run trains cold
    (the caller re-initialises the model). The check costs one prediction over the held-out faces."""
    if not warm.warm or warm.champion is None:
        return warm
    then = reference_accuracy(warm.champion)
    if then is None:
        return dataclasses.replace(warm, reason=warm.reason + "; it has no reference profile to check the fit against")
    now = float(np.mean(np.argmax(model.predict(images, batch_size=256, verbose=0), axis=1) == labels))
    scores = f"its weights score {now:.1%} on today's {len(labels)} held-out faces, {then:.1%} on its own when trained"
    if then - now > max_drop:
        return WarmStart(False, f"the data has moved: {scores} (more than {max_drop:.0%} lower)", warm.champion)
    return dataclasses.replace(warm, reason=f"{warm.reason}; {scores}")
