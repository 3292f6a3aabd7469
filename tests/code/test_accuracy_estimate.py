"""Accuracy without labels (moodloop/core/accuracy_estimate.py): the estimators' arithmetic on
windows whose truth is known by construction. How well they do on a trained model's faces under
shifts is bench/accuracy_estimate.py's subject, not a test's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moodloop.core import accuracy_estimate as ae
from moodloop.core.contracts import EMOTIONS, LOG_PROBABILITY_COLUMNS


def calibrated_window(n: int, rng: np.random.Generator, sharpness: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: calibrated by construction."""
    probabilities = rng.dirichlet(np.full(7, 1.0 / sharpness), size=n)
    labels = np.array([rng.choice(7, p=p) for p in probabilities])
    return probabilities, labels


def test_cbpe_of_calibrated_probabilities_brackets_the_realised_accuracy():
    rng = np.random.default_rng(0)
    inside = 0
    for _ in range(40):
        probabilities, labels = calibrated_window(500, rng)
        found = ae.cbpe(probabilities)
        truth = (probabilities.argmax(axis=1) == labels).mean()
        inside += found.low <= truth <= found.high
        assert abs(found.accuracy - truth) < 0.08
    assert inside >= 34  # a 95 % interval: 38 of 40 expected; far fewer would mean a wrong spread


def test_atc_threshold_reproduces_the_held_out_accuracy_and_follows_a_shift_in_confidence():
    rng = np.random.default_rng(1)
    probabilities, labels = calibrated_window(2000, rng)
    atc = ae.fit_atc(probabilities, labels)
    held_out = (probabilities.argmax(axis=1) == labels).mean()
    assert atc.held_out_accuracy == pytest.approx(held_out)
    assert atc.estimate(probabilities).accuracy == pytest.approx(held_out, abs=2 / 2000)
    flatter, _ = calibrated_window(2000, rng, sharpness=1.0)  # a less certain model: fewer above t
    assert atc.estimate(flatter).accuracy < held_out - 0.1


def test_estimators_refuse_what_is_not_a_window_of_probabilities():
    with pytest.raises(ValueError, match="shape"):
        ae.cbpe(np.ones(7))
    with pytest.raises(ValueError, match="NaN"):
        ae.cbpe(np.full((3, 7), np.nan))
    with pytest.raises(ValueError, match="labels"):
        ae.fit_atc(np.full((3, 7), 1 / 7), [0, 1])
    with pytest.raises(ValueError, match="expected one of"):
        ae.estimate_frame({c: [1 / 7] for c in LOG_PROBABILITY_COLUMNS}, None, method="oracle")


def held_out_stats(rng: np.random.Generator) -> ae.HeldOutStats:
    probabilities, labels = calibrated_window(500, rng)
    properties = {"brightness": rng.normal(0.5, 0.05, 500), "contrast": rng.normal(0.2, 0.02, 500)}
    properties["sharpness"] = rng.lognormal(7, 0.2, 500)
    return ae.HeldOutStats.of(probabilities, labels, properties, rng.normal(size=(500, 8)))


def test_the_learned_estimator_interpolates_its_fitting_windows_and_travels_as_json():
    """Fitting windows as corruptions make them: two hidden knobs (a kind of corruption and its
    strength) move every feature, and the accuracy is a function of the knobs. The regression
    finds a new window's accuracy between them, says its own error, and reads back from JSON."""
    rng = np.random.default_rng(2)
    held_out = held_out_stats(rng)
    mixing = rng.normal(size=(2, len(ae.FEATURES)))

    def windows(knobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = knobs @ mixing + rng.normal(0, 0.01, (len(knobs), len(ae.FEATURES)))
        return features, 0.9 - 0.5 * knobs[:, 0] - 0.2 * knobs[:, 1]

    features, accuracies = windows(rng.random((300, 2)))
    estimator = ae.fit_learned(held_out, features, accuracies, ["blur", "none"])
    assert 0 < estimator.error_q90 < 0.05
    probes, truths = windows(rng.random((20, 2)))
    for probe, truth in zip(probes, truths, strict=True):
        found = estimator.estimate(probe, faces=400)
        assert found.method == ae.LEARNED and found.accuracy == pytest.approx(truth, abs=0.05)
        assert found.high - found.low >= 2 * 1.96 * estimator.local_error(estimator.standardise(probe))
    again = ae.LearnedEstimator.from_dict(json.loads(json.dumps(estimator.as_dict())))
    assert again.estimate(probes[0], faces=400) == estimator.estimate(probes[0], faces=400)
    assert again.corruptions == ["blur", "none"]
    with pytest.raises(ValueError, match="more than"):
        ae.fit_learned(held_out, features[:5], accuracies[:5])


def inference_log_rows(probabilities: np.ndarray, rng: np.random.Generator, embedding: bool = True) -> dict:
    rows = {c: probabilities[:, k] for k, c in enumerate(LOG_PROBABILITY_COLUMNS)}
    n = len(probabilities)
    rows |= {"brightness": rng.normal(0.5, 0.05, n), "contrast": rng.normal(0.2, 0.02, n)}
    rows["sharpness"] = rng.lognormal(7, 0.2, n)
    if embedding:
        rows |= {f"emb_{k}": rng.normal(size=n) for k in range(8)}
    rows["predicted_class"] = [EMOTIONS[k] for k in probabilities.argmax(axis=1)]
    return rows


def test_a_window_is_estimated_by_the_best_method_its_version_carries():
    rng = np.random.default_rng(3)
    held_out = held_out_stats(rng)
    features = rng.normal(size=(100, len(ae.FEATURES)))
    estimator = ae.fit_learned(held_out, features, np.full(100, 0.7))
    probabilities, _ = calibrated_window(200, rng)
    rows = inference_log_rows(probabilities, rng)

    found = ae.estimate_frame(rows, estimator)
    assert found["decides"] == ae.LEARNED and set(found) == {ae.CBPE, ae.ATC, ae.LEARNED, "decides"}
    assert found[ae.LEARNED]["accuracy"] == pytest.approx(0.7)
    assert found[ae.CBPE]["accuracy"] == pytest.approx(probabilities.max(axis=1).mean(), abs=1e-4)
    # A version without an estimator (older than estimators): CBPE alone.
    assert ae.estimate_frame(rows, None)["decides"] == ae.CBPE
    # Rows without an embedding (a model that gives none): ATC, not a regression on NaN.
    bare = inference_log_rows(probabilities, rng) | {f"emb_{k}": np.full(200, np.nan) for k in range(8)}
    assert ae.estimate_frame(bare, estimator)["decides"] == ae.ATC


def test_worse_beyond_interval_needs_the_intervals_apart():
    low = ae.AccuracyEstimate(ae.LEARNED, 0.60, 0.55, 0.65, 300)
    high = ae.AccuracyEstimate(ae.LEARNED, 0.80, 0.75, 0.85, 300)
    close = ae.AccuracyEstimate(ae.LEARNED, 0.72, 0.66, 0.78, 300)
    assert ae.worse_beyond_interval(low, high) and not ae.worse_beyond_interval(high, low)
    assert not ae.worse_beyond_interval(close, high)
