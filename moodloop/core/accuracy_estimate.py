"""Accuracy without labels: how often a model is right on faces nobody has labelled yet, from the
calibrated probabilities the inference log keeps.

Three estimators, each needing only what the inference log keeps of a window and, for the model,
its held-out faces (the reference profile: probabilities, image properties, embedding, true label):

- CBPE, confidence-based performance estimation (NannyML): with calibrated probabilities a
  prediction made with confidence c is right with probability c, so the window's expected accuracy
  is the mean of its confidences. Exact while the calibration holds; a shift that makes the model
  confidently wrong breaks it (it then over-estimates).
- ATC, average thresholded confidence (Garg et al., "Leveraging unlabeled data to predict
  out-of-distribution performance", ICLR 2022): a threshold t on a confidence score is fitted on the
  held-out faces so that the share of faces scoring above t equals the held-out accuracy; a window's
  estimate is its share of faces above t. The score here is the negative entropy of the
  probabilities (the paper's better score).

- LEARNED, a regression of accuracy on what a window looks like (after Deng & Zheng, "Are labels
  always necessary for classifier accuracy evaluation?", CVPR 2021): when a model is trained, its
  held-out faces are corrupted in many ways (light, contrast, blur, noise, pixelation, occlusion,
  gamma; components/accuracy_estimator.py) and cut into windows whose accuracy is known; each
  window is described by `window_features` (CBPE, ATC, entropy, confidence quantiles, how far its
  image properties and embedding moved from the held-out faces'), and a k-nearest-neighbour
  regression maps those features to accuracy. It sees what the confidence alone cannot: under
  noise the model is confidently wrong (CBPE +40 points), but the faces' sharpness and embedding
  have moved, and corrupted windows that moved so were wrong too. It stays a regression: a shift
  unlike every corruption it was fitted on (JPEG blocking) can fool it; the bench prints where.

Which one decides (`METHOD`) was chosen by measurement: bench/accuracy_estimate.py prints all on
clean windows and on every shift, with their errors against the truth.

CBPE's and ATC's interval is the window's sampling spread only (a binomial's, 95 %): how much the
accuracy of that many faces scatters around the estimate. LEARNED's adds the regression's own
error where the window lies: its neighbours' errors when each was left out and estimated by the
others. None covers an
estimator's bias under a shift it cannot see; the bench prints that bias.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from moodloop.core.contracts import LOG_PROBABILITY_COLUMNS

CBPE, ATC, LEARNED = "cbpe", "atc", "learned"
METHODS = (CBPE, ATC, LEARNED)
METHOD = LEARNED  # the estimate that decides (canary analysis) and is shown first; see the module doc
NEIGHBOURS = 10
Z_95 = 1.96


@dataclasses.dataclass(frozen=True)
class AccuracyEstimate:
    method: str
    accuracy: float
    low: float
    high: float
    faces: int

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.accuracy:.1%} ({self.low:.1%}-{self.high:.1%}, {self.method.upper()}, {self.faces} faces)"


def _as_probabilities(probabilities) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected probabilities as [faces, classes], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or infinity")
    return p


def negative_entropy(probabilities) -> np.ndarray:
    p = np.clip(_as_probabilities(probabilities), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


def _interval(method: str, accuracy: float, spread: float, faces: int) -> AccuracyEstimate:
    low, high = max(0.0, accuracy - Z_95 * spread), min(1.0, accuracy + Z_95 * spread)
    return AccuracyEstimate(method, float(accuracy), float(low), float(high), faces)


def cbpe(probabilities) -> AccuracyEstimate:
    """Mean confidence; the spread of a sum of independent Bernoulli(c_i), over the window's size."""
    confidence = _as_probabilities(probabilities).max(axis=1)
    n = len(confidence)
    spread = math.sqrt(float((confidence * (1 - confidence)).sum())) / n
    return _interval(CBPE, float(confidence.mean()), spread, n)


@dataclasses.dataclass(frozen=True)
class AtcThreshold:
    """ATC's threshold, fitted once per model version on its held-out faces."""

    threshold: float
    held_out_accuracy: float
    held_out_faces: int

    def estimate(self, probabilities) -> AccuracyEstimate:
        scores = negative_entropy(probabilities)
        n = len(scores)
        accuracy = float((scores > self.threshold).mean())
        return _interval(ATC, accuracy, math.sqrt(accuracy * (1 - accuracy) / n), n)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_atc(probabilities, labels) -> AtcThreshold:
    """The threshold t whose share of held-out faces scoring above it equals their accuracy."""
    p = _as_probabilities(probabilities)
    labels = np.asarray(labels)
    if labels.shape != (len(p),):
        raise ValueError(f"{len(labels)} labels for {len(p)} faces")
    accuracy = float((p.argmax(axis=1) == labels).mean())
    scores = np.sort(negative_entropy(p))
    # The share above scores[k] is (n - k - 1) / n: pick k with that share nearest the accuracy.
    n = len(scores)
    k = int(np.clip(round(n * (1 - accuracy)) - 1, 0, n - 1))
    threshold = float(scores[k]) if accuracy < 1 else float(scores[0]) - 1.0
    return AtcThreshold(threshold, accuracy, n)


# ---------------------------------------------------------------- what a window looks like

FEATURES = (
    "cbpe",  # mean confidence
    "atc",  # share above the ATC threshold
    "mean_negative_entropy",
    "confidence_q25",
    "confidence_median",
    "brightness_shift",  # window mean - held-out mean (0..1 scale)
    "contrast_log_ratio",  # log(window mean / held-out mean)
    "sharpness_log_ratio",  # log(window median / held-out median): blur < 0 < noise
    "embedding_mean_shift",  # mean over dimensions of |window mean - held-out mean| / held-out std
    "embedding_spread",  # mean squared standardised embedding (1 on held-out faces)
)
PROPERTIES = ("brightness", "contrast", "sharpness")


def embedding_columns(columns) -> list[str]:
    return sorted((c for c in columns if c.startswith("emb_")), key=lambda c: int(c[4:]))


@dataclasses.dataclass(frozen=True)
class HeldOutStats:
    """What the window features compare with: the model's held-out faces, summarised."""

    atc: AtcThreshold
    brightness_mean: float
    contrast_mean: float
    sharpness_median: float
    embedding_mean: list[float]
    embedding_std: list[float]

    @classmethod
    def of(cls, probabilities, labels, properties: dict, embedding) -> HeldOutStats:
        embedding = np.asarray(embedding, dtype=np.float64).reshape(len(labels), -1)
        return cls(
            atc=fit_atc(probabilities, labels),
            brightness_mean=float(np.nanmean(properties["brightness"])),
            contrast_mean=float(np.nanmean(properties["contrast"])),
            sharpness_median=float(np.nanmedian(properties["sharpness"])),
            embedding_mean=embedding.mean(axis=0).tolist(),
            embedding_std=(embedding.std(axis=0) + 1e-6).tolist(),
        )

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutStats:
        return cls(**{**d, "atc": AtcThreshold(**d["atc"])})


def window_features(probabilities, properties: dict, embedding, held_out: HeldOutStats) -> np.ndarray:
    """FEATURES of one window: its probabilities [N, 7], image properties (PROPERTIES, [N] each)
    and embedding [N, k], against the held-out faces' statistics."""
    p = _as_probabilities(probabilities)
    confidence, entropy = p.max(axis=1), negative_entropy(p)
    embedding = np.asarray(embedding, dtype=np.float64).reshape(len(p), -1)
    z = (embedding - np.asarray(held_out.embedding_mean)) / np.asarray(held_out.embedding_std)
    tiny = 1e-9
    return np.array(
        [
            confidence.mean(),
            (entropy > held_out.atc.threshold).mean(),
            entropy.mean(),
            np.quantile(confidence, 0.25),
            np.median(confidence),
            np.nanmean(properties["brightness"]) - held_out.brightness_mean,
            np.log((np.nanmean(properties["contrast"]) + tiny) / (held_out.contrast_mean + tiny)),
            np.log((np.nanmedian(properties["sharpness"]) + tiny) / (held_out.sharpness_median + tiny)),
            np.abs(z.mean(axis=0)).mean(),
            (z**2).mean(),
        ]
    )


def frame_features(frame, held_out: HeldOutStats) -> np.ndarray:
    """window_features of inference-log rows (a pandas frame, or any mapping of columns)."""
    probabilities = np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in LOG_PROBABILITY_COLUMNS])
    properties = {c: np.asarray(frame[c], dtype=np.float64) for c in PROPERTIES}
    embedding = np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in embedding_columns(frame.keys())])
    return window_features(probabilities, properties, embedding, held_out)


# ---------------------------------------------------------------- the learned estimator


@dataclasses.dataclass(frozen=True)
class LearnedEstimator:
    """k nearest fitting windows (standardised FEATURES, weighted by inverse distance) -> accuracy.
    Plain numbers, so it travels as JSON in the model version (ACCURACY_ESTIMATOR) and reads the
    same in every environment."""

    held_out: HeldOutStats
    feature_mean: list[float]
    feature_std: list[float]
    windows: list[list[float]]  # standardised features of the fitting windows
    accuracies: list[float]  # their true accuracies
    error_q90: float  # the regression's own error: 90th percentile, each window left out in turn
    corruptions: list[str] = dataclasses.field(default_factory=list)  # what the fitting windows saw
    left_out_errors: list[float] = dataclasses.field(default_factory=list)  # each window's, left out

    def _neighbours(self, standardised: np.ndarray, leave_out: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        distance = np.sqrt(((np.asarray(self.windows) - standardised) ** 2).sum(axis=1))
        if leave_out is not None:
            distance[leave_out] = np.inf
        nearest = np.argsort(distance)[:NEIGHBOURS]
        return nearest, 1.0 / (distance[nearest] + 1e-6)

    def _predict(self, standardised: np.ndarray, leave_out: int | None = None) -> float:
        nearest, weights = self._neighbours(standardised, leave_out)
        return float((weights * np.asarray(self.accuracies)[nearest]).sum() / weights.sum())

    def local_error(self, standardised: np.ndarray) -> float:
        """The regression's error where the window lies: the root mean square of its neighbours'
        own left-out errors (near clean windows it is a few points; among heavy corruptions, more)."""
        if not self.left_out_errors:
            return self.error_q90
        nearest, weights = self._neighbours(standardised)
        errors = np.asarray(self.left_out_errors)[nearest]
        return float(np.sqrt((weights * errors**2).sum() / weights.sum()))

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features) - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)

    def estimate(self, features: np.ndarray, faces: int) -> AccuracyEstimate:
        standardised = self.standardise(features)
        accuracy = float(np.clip(self._predict(standardised), 0.0, 1.0))
        sampling = math.sqrt(accuracy * (1 - accuracy) / max(faces, 1))
        half = Z_95 * math.sqrt(self.local_error(standardised) ** 2 + sampling**2)
        return AccuracyEstimate(LEARNED, accuracy, max(0.0, accuracy - half), min(1.0, accuracy + half), faces)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LearnedEstimator:
        return cls(**{**d, "held_out": HeldOutStats.from_dict(d["held_out"])})


def fit_learned(
    held_out: HeldOutStats, features: np.ndarray, accuracies: np.ndarray, corruptions: list[str] = ()
) -> LearnedEstimator:
    features, accuracies = np.asarray(features, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(FEATURES) or len(features) != len(accuracies):
        raise ValueError(f"expected [windows, {len(FEATURES)}] features and one accuracy per window")
    if len(features) <= NEIGHBOURS:
        raise ValueError(f"{len(features)} fitting windows: the estimator needs more than {NEIGHBOURS}")
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-9
    standardised = (features - mean) / std
    draft = LearnedEstimator(held_out, mean.tolist(), std.tolist(), standardised.tolist(), accuracies.tolist(), 0.0)
    left_out = [abs(draft._predict(standardised[i], leave_out=i) - accuracies[i]) for i in range(len(accuracies))]
    return dataclasses.replace(
        draft,
        error_q90=float(np.quantile(left_out, 0.9)),
        corruptions=list(corruptions),
        left_out_errors=[float(e) for e in left_out],
    )


def load(path) -> LearnedEstimator | None:
    """The estimator a model version carries (ACCURACY_ESTIMATOR), or None if it has none."""
    path = Path(path)
    return LearnedEstimator.from_dict(json.loads(path.read_text())) if path.is_file() else None


def estimate_frame(frame, estimator: LearnedEstimator | None, method: str = METHOD) -> dict[str, dict]:
    """Every method's estimate for inference-log rows, as {method: estimate dict}: CBPE always,
    ATC and LEARNED when the version carries its estimator. "decides" names the one `method` picks
    (the best available)."""
    if method not in METHODS:
        raise ValueError(f"accuracy estimate {method!r}: expected one of {METHODS}")
    probabilities = np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in LOG_PROBABILITY_COLUMNS])
    found = {CBPE: cbpe(probabilities)}
    if estimator is not None:
        found[ATC] = estimator.held_out.atc.estimate(probabilities)
        features = frame_features(frame, estimator.held_out) if embedding_columns(frame.keys()) else None
        if features is not None and np.isfinite(features).all():  # rows without an embedding: no LEARNED
            found[LEARNED] = estimator.estimate(features, len(probabilities))
    chosen = method if method in found else next(m for m in (ATC, CBPE) if m in found)
    return {m: e.as_dict() for m, e in found.items()} | {"decides": chosen}


def describe(found: dict, live: dict | None = None) -> str:
    """estimate_frame's answer (and the realised accuracy on feedback labels, when there are any) in
    words: 'estimated accuracy 81.2% (77.0%-85.4%, LEARNED, 200 faces); labelled: 80.5% on 150'."""
    chosen = found[found["decides"]]
    line = f"estimated accuracy {AccuracyEstimate(**chosen)}"
    return line + (f"; labelled: {live['accuracy']:.1%} on {live['labelled']} labels" if live else "; no labels yet")


def worse_beyond_interval(candidate: AccuracyEstimate, baseline: AccuracyEstimate) -> bool:
    """Is the candidate estimated worse than the baseline beyond both intervals? (The canary rule
    when labels are missing: a plain difference of two noisy estimates would roll back by chance.)"""
    return candidate.high < baseline.low
