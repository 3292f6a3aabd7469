"""Warm start: a retrain begins from the champion's weights instead of a random initialisation.

The champion is the version labelled `stable` in models.config (what users are served), the
same model the A/B gate compares against. Every exported model carries its Keras weights and an
architecture fingerprint in `assets.extra/` (TF Serving ignores that folder apart from its
warm-up records); a retrain loads them only when the fingerprint matches its own model, so a
changed architecture (another MOODLOOP_MODEL_SIZE, an adopted model) trains cold, and says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

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
