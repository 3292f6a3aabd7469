"""The offline A/B gate's statistics: it promotes a clearly better candidate, does not promote an
equal one by chance (false-promotion rate measured over many seeds), blocks a worse one and one
whose overall gain hides a per-class collapse, and refuses to decide on too few faces."""

from __future__ import annotations

import numpy as np
import pytest

from components.ab_gate import decide, mcnemar_exact_p
from moodloop.contracts import EMOTIONS, FER2013_CLASS_COUNTS
from moodloop.settings import GateSettings

SHARES = np.array([FER2013_CLASS_COUNTS[e] for e in EMOTIONS], dtype=float)
SHARES /= SHARES.sum()
GATE = GateSettings(min_accuracy=0.4, alpha=0.05, min_examples=200, max_class_recall_drop=0.05, bootstrap=300)


def faces(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(EMOTIONS), size=n, p=SHARES)


def predictions(labels: np.ndarray, accuracy: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A classifier right with probability `accuracy` (per face), otherwise a wrong class."""
    right = rng.random(len(labels)) < accuracy
    wrong = (labels + rng.integers(1, len(EMOTIONS), len(labels))) % len(EMOTIONS)
    return np.where(right, labels, wrong)


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(0.5**10)
    assert mcnemar_exact_p(5, 5) == pytest.approx(0.623046875)  # P(X >= 5), X ~ Bin(10, 1/2)
    assert mcnemar_exact_p(2, 8) > 0.9


def test_clearly_better_candidate_is_blessed():
    rng = np.random.default_rng(1)
    labels = faces(2000, rng)
    result = decide(labels, predictions(labels, 0.80, rng), predictions(labels, 0.70, rng), GATE)
    assert result["verdict"] == "BLESSED", result["reasons"]
    assert result["mcnemar"]["p_value"] < 1e-6
    low, high = result["accuracy_difference_ci"]
    assert 0.05 < low < result["accuracy_difference"] < high < 0.15


def test_an_equal_candidate_is_rarely_promoted_by_chance():
    rng = np.random.default_rng(2)
    trials, promoted = 1000, 0
    for _ in range(trials):
        labels = faces(1000, rng)
        # Same skill; half of the faces are ones both get right or wrong together (paired data).
        shared = rng.random(len(labels)) < 0.5
        champion = predictions(labels, 0.7, rng)
        candidate = np.where(shared, champion, predictions(labels, 0.7, rng))
        promoted += decide(labels, candidate, champion, GATE)["blessed"]
    rate = promoted / trials
    print(f"false-promotion rate {rate:.3f} over {trials} seeds (alpha {GATE.alpha})")
    # The exact test keeps the true rate at or below alpha; 1,000 seeds measure it to about +-0.014.
    assert rate <= GATE.alpha


def test_worse_candidate_is_rejected_against_the_champion():
    rng = np.random.default_rng(3)
    labels = faces(2000, rng)
    result = decide(labels, predictions(labels, 0.60, rng), predictions(labels, 0.70, rng), GATE)
    assert result["verdict"] == "REJECTED"
    assert "not better than the champion beyond chance" in result["reasons"][0]


def test_a_per_class_collapse_blocks_a_candidate_whose_accuracy_rose():
    rng = np.random.default_rng(4)
    labels = faces(4000, rng)
    disgust = EMOTIONS.index("disgust")
    champion = predictions(labels, 0.70, rng)
    skill = np.where(labels == disgust, 0.10, 0.80)  # better everywhere except disgust
    candidate = predictions(labels, skill, rng)
    result = decide(labels, candidate, champion, GATE)
    assert result["accuracy_difference"] > 0.05 and result["mcnemar"]["p_value"] < GATE.alpha
    assert result["verdict"] == "REJECTED"
    assert result["per_class"]["disgust"]["regression"] is True
    assert [r for r in result["reasons"] if r.startswith("disgust recall fell")]
    assert not any(v["regression"] for k, v in result["per_class"].items() if k != "disgust")


def test_too_few_faces_means_no_decision_and_first_model_faces_the_floor():
    rng = np.random.default_rng(5)
    labels = faces(150, rng)
    result = decide(labels, labels.copy(), None, GATE)
    assert result["verdict"] == "UNDECIDED" and not result["blessed"] and "150" in result["reasons"][0]

    labels = faces(500, rng)
    assert decide(labels, predictions(labels, 0.6, rng), None, GATE)["verdict"] == "BLESSED"
    rejected = decide(labels, predictions(labels, 0.2, rng), None, GATE)
    assert rejected["verdict"] == "REJECTED" and "below the floor" in rejected["reasons"][0]
