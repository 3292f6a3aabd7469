"""Fit a model version's label-free accuracy estimator on its held-out faces (issue 31).

The A/B gate calls `fit` for every candidate with the held-out faces it has just scored: they are
cut into windows, most of them corrupted (one or two of: light, contrast, gamma, blur, noise,
pixelation, occlusion, each at a random strength), and the candidate answers each window through
its serving_pixels signature, as live traffic is answered. Each window's features
(moodloop/core/accuracy_estimate.py window_features) and true accuracy become one fitting point of
the k-nearest-neighbour regression; the result travels in the version as ACCURACY_ESTIMATOR.

Rotation and JPEG compression are deliberately not among the corruptions: bench/accuracy_estimate.py
measures the estimator on them as shifts it has never seen.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from PIL import Image, ImageFilter

from moodloop.core import accuracy_estimate
from moodloop.core.contracts import OUTPUT_EMBEDDING, OUTPUT_IMAGE_PROPERTIES, OUTPUT_PROBABILITIES, SIGNATURE_PIXELS

log = logging.getLogger(__name__)

CORRUPTIONS = ("light", "contrast", "gamma", "blur", "noise", "pixelate", "occlude")
CLEAN_SHARE = 0.1  # of the fitting windows left as they are: the estimator must know a clean window too


def _through_pil(x: np.ndarray, change) -> np.ndarray:
    faces = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return np.stack([np.asarray(change(Image.fromarray(face)), dtype=np.float64) / 255 for face in faces])


def corrupt(pixels: np.ndarray, kinds: tuple[str, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """[N, 48, 48] uint8 faces with each of `kinds` applied at `strength` (0..1)."""
    x = pixels.astype(np.float64) / 255
    for kind in kinds:
        if kind == "light":
            x = x + rng.choice([-1, 1]) * 0.35 * strength
        elif kind == "contrast":
            x = 0.5 + (x - 0.5) * (1 - 0.7 * strength)
        elif kind == "gamma":
            x = np.clip(x, 0, 1) ** np.exp(rng.choice([-1, 1]) * strength)
        elif kind == "noise":
            x = x + rng.normal(0, 0.25 * strength, x.shape)
        elif kind == "blur":
            x = _through_pil(x, lambda image: image.filter(ImageFilter.GaussianBlur(2.0 * strength)))
        elif kind == "pixelate":
            side = int(round(48 - 36 * strength))
            x = _through_pil(x, lambda image, side=side: image.resize((side, side), Image.BILINEAR).resize((48, 48)))
        elif kind == "occlude":
            x = x.copy()
            for face in x:
                if rng.random() < strength:
                    height, width = rng.integers(8, 24, 2)
                    top, left = rng.integers(0, 48 - height), rng.integers(0, 48 - width)
                    face[top : top + height, left : left + width] = rng.random()
        else:
            raise ValueError(f"unknown corruption {kind!r}; known: {CORRUPTIONS}")
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def answers(signature, pixels: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """The model's probabilities, image properties (log column names) and embedding for raw faces."""
    import tensorflow as tf

    chunks = [signature(pixels=tf.constant(pixels[i : i + batch], tf.uint8)) for i in range(0, len(pixels), batch)]
    out = {key: np.concatenate([c[key].numpy() for c in chunks]) for key in chunks[0]}
    found = {column: out[output] for output, column in OUTPUT_IMAGE_PROPERTIES.items() if output in out}
    found[OUTPUT_PROBABILITIES] = out[OUTPUT_PROBABILITIES]
    found[OUTPUT_EMBEDDING] = out.get(OUTPUT_EMBEDDING, np.zeros((len(pixels), 0)))
    return found


def fit(
    model_dir: str, pixels: np.ndarray, labels: np.ndarray, windows: int, window_faces: int, seed: int = 0
) -> accuracy_estimate.LearnedEstimator:
    """The estimator of the SavedModel in `model_dir`, fitted on its held-out faces `pixels` [N, 48, 48]
    uint8 with true `labels` [N]: `windows` windows of `window_faces` faces each (fewer when there
    are fewer faces)."""
    import tensorflow as tf

    started = time.perf_counter()
    signature = tf.saved_model.load(model_dir).signatures[SIGNATURE_PIXELS]
    labels = np.asarray(labels)
    clean = answers(signature, pixels)
    properties = {c: clean[c] for c in accuracy_estimate.PROPERTIES}
    held_out = accuracy_estimate.HeldOutStats.of(
        clean[OUTPUT_PROBABILITIES], labels, properties, clean[OUTPUT_EMBEDDING]
    )
    rng = np.random.default_rng(seed)
    size = min(window_faces, len(labels))
    features, accuracies, seen = [], [], []
    for w in range(windows):
        chosen = rng.choice(len(labels), size, replace=False)
        if w < max(1, round(windows * CLEAN_SHARE)):
            kinds, strength, out = (), 0.0, {k: v[chosen] for k, v in clean.items()}
        else:
            kinds = tuple(rng.choice(CORRUPTIONS, size=rng.integers(1, 3), replace=False))
            strength = float(rng.random())
            out = answers(signature, corrupt(pixels[chosen], kinds, strength, rng))
        probabilities = out[OUTPUT_PROBABILITIES]
        features.append(
            accuracy_estimate.window_features(
                probabilities, {c: out[c] for c in accuracy_estimate.PROPERTIES}, out[OUTPUT_EMBEDDING], held_out
            )
        )
        accuracies.append(float((probabilities.argmax(axis=1) == labels[chosen]).mean()))
        seen.append("+".join(kinds) or "none")
    estimator = accuracy_estimate.fit_learned(held_out, np.array(features), np.array(accuracies), sorted(set(seen)))
    log.info(
        f"accuracy estimator: {windows} windows of {size} held-out faces (accuracy "
        f"{min(accuracies):.2f}..{max(accuracies):.2f}); its own error (90th percentile, left out) "
        f"{estimator.error_q90:.3f}; fitted in {time.perf_counter() - started:.1f} s"
    )
    return estimator


def write(estimator: accuracy_estimate.LearnedEstimator, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(estimator.as_dict(), fh)
