"""Self-training on the kept live faces after a drift: the faces nobody labelled still teach.

After a drift the loop asks people to label a few hundred of the kept live faces (the labelling
queue). The thousands it kept and did not ask about are today's traffic too. A model fitted with
the answered faces labels the unanswered ones it is sure of (pseudo-labels, Lee 2013; self-training
for domain adaptation), and a second cold fit learns from both. The pseudo-labelled faces only
ever train: the held-out split, which calibrates the model and which the A/B gate judges on, holds
people's labels alone, so a wrong pseudo-label can cost a candidate its blessing but never buy one.

Measured before it was built (a bare fit, the drill's dim shift, seed 0, 2026-12-05): 4,000 clean
faces + 500 loop-chosen labels reached 0.710 on fresh dim faces; adding the 1,184 of 3,500
unlabelled dim faces it was >= 0.9 sure of (97 % of those pseudo-labels right) reached 0.796; a
second round 0.787 (no gain, so one round); the 4,000-face labelled batch 0.832. In the product it
helped on some draws and not on others (docs/benchmarks.md), so the second fit is the candidate
only when it scores at least as well as the first on the held-out faces (people's labels).
Which kept faces are unlabelled (not answered, no feedback label): components/live_faces.py.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from moodloop.core.contracts import FACE_SIZE, FEATURE_IMAGE, NUM_CLASSES

log = logging.getLogger("components.self_training")

ENCODE_BATCH = 512  # faces per call of the Transform graph


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    images: np.ndarray  # [M, 48, 48, 1] transformed faces the model was sure of
    labels: np.ndarray  # [M] its answers
    report: dict  # for the run's summary: kept, unanswered, pseudo-labelled, threshold, per class


def transformed(tft_layer, encoded: list[bytes]) -> np.ndarray:
    """PNG faces through the Transform graph: the model's inputs, [N, 48, 48, 1] float32."""
    import tensorflow as tf

    from components.model import INPUT_KEY

    parts = [
        tft_layer({FEATURE_IMAGE: tf.reshape(tf.constant(encoded[i : i + ENCODE_BATCH]), [-1, 1])})[INPUT_KEY].numpy()
        for i in range(0, len(encoded), ENCODE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.float32)


def pseudo_label(probabilities: np.ndarray, images: np.ndarray, threshold: float) -> PseudoLabels:
    """The faces whose top probability reaches `threshold`, with the model's answer as their label."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, NUM_CLASSES)
    sure = probabilities.max(axis=1, initial=0.0) >= threshold
    labels = probabilities.argmax(axis=1)[sure].astype(np.int64) if len(probabilities) else np.zeros(0, np.int64)
    report = {
        "unanswered_faces": len(probabilities),
        "pseudo_labelled": int(sure.sum()),
        "threshold": threshold,
        "per_class": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
    }
    return PseudoLabels(images[sure], labels, report)
