"""Temperature scaling (Guo et al. 2017): calibrated confidence without changing any prediction.

A network trained with cross-entropy is often over- or under-confident. One scalar T, fitted on
held-out faces by minimising the negative log-likelihood of softmax(logits / T), is baked into
the exported model. Dividing every logit by the same T keeps the arg-max: accuracy is unchanged.
Expected calibration error (ECE) is measured on held-out faces that did not fit T.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_probs = log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises held-out NLL (searched on log T: the loss is smooth there)."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's bars)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "bin_low": [], "bin_high": []}
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows["confidence"].append(float(confidence[in_bin].mean()))
            rows["accuracy"].append(float(correct[in_bin].mean()))
            rows["count"].append(int(in_bin.sum()))
            rows["bin_low"].append(float(edges[b]))
            rows["bin_high"].append(float(edges[b + 1]))
    return rows


@dataclasses.dataclass(frozen=True)
class Calibration:
    temperature: float  # baked into the exported model: fitted on every held-out face
    ece_before: float  # on half of the held-out faces ...
    ece_after: float  # ... with `check_temperature`, fitted on the other half only (a fair before/after)
    check_temperature: float
    fit_faces: int
    check_faces: int
    reliability_before: dict
    reliability_after: dict

    def summary(self) -> str:
        return (
            f"calibration: temperature {self.temperature:.3f} fitted on {self.fit_faces + self.check_faces} held-out "
            f"faces; expected calibration error {self.ece_before:.3f} -> {self.ece_after:.3f} on {self.check_faces} "
            f"of them with T = {self.check_temperature:.3f} fitted on the {self.fit_faces} others"
        )


def calibrate(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """T for the exported model from every held-out face (more faces, a steadier T); the
    before/after error from a split: T fitted on every other face, judged on the rest."""
    fit, check = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    if fit.sum() < 20 or check.sum() < 20:  # too few faces to fit or judge: keep the raw softmax
        before = softmax(logits.astype(np.float64), axis=1)
        ece = expected_calibration_error(before, labels)
        rel = reliability(before, labels)
        return Calibration(1.0, ece, ece, 1.0, 0, len(labels), rel, rel)
    check_temperature = fit_temperature(logits[fit], labels[fit])
    before = softmax(logits[check].astype(np.float64), axis=1)
    after = softmax(logits[check].astype(np.float64) / check_temperature, axis=1)
    return Calibration(
        temperature=fit_temperature(logits, labels),
        ece_before=expected_calibration_error(before, labels[check]),
        ece_after=expected_calibration_error(after, labels[check]),
        check_temperature=check_temperature,
        fit_faces=int(fit.sum()),
        check_faces=int(check.sum()),
        reliability_before=reliability(before, labels[check]),
        reliability_after=reliability(after, labels[check]),
    )
