"""The edge files' parity gate (components/edge.py): agreement with the SavedModel overall at its
goal, per emotion not below it beyond chance; and the preprocessing it folds in must be affine."""

from __future__ import annotations

import numpy as np
import pytest

from components import edge


def _parity(kind: str, per_class: dict[str, tuple[int, int]]) -> dict:
    faces = sum(n for _, n in per_class.values())
    agreeing = sum(a for a, _ in per_class.values())
    return {
        "faces": faces,
        "agreement": agreeing / faces,
        "per_class": {e: {"faces": n, "agreement": a / n} for e, (a, n) in per_class.items()},
    }


def test_one_near_tie_in_a_small_class_does_not_block_a_file_that_agrees_on_1999_of_2000():
    parity = _parity("float16", {"happy": (1968, 1968), "disgust": (31, 32)})
    assert edge.parity_problems("float16", parity) == []
    assert parity["per_class"]["disgust"]["p_below_goal"] == pytest.approx(1 - 0.99**32)


def test_a_real_shortfall_in_one_emotion_or_overall_blocks_the_file():
    blocked = edge.parity_problems("int8", _parity("int8", {"happy": (1800, 1800), "neutral": (176, 188)}))
    assert len(blocked) == 1 and blocked[0].startswith("neutral: agrees on 93.62% of 188 faces")
    overall = edge.parity_problems("float16", _parity("float16", {"happy": (970, 1000)}))
    assert overall and "97.00% of 1000 faces (goal 99%)" in overall[0]


def test_agreement_counts_each_emotion_and_the_near_ties():
    reference = np.array([[0.9, 0.1, 0, 0, 0, 0, 0], [0.50, 0.49, 0.01, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]])
    edge_answers = np.array([[0.8, 0.2, 0, 0, 0, 0, 0], [0.4, 0.6, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
    parity = edge.agreement(reference, edge_answers, np.array([0, 0, 2]))
    assert parity["agreement"] == pytest.approx(1 / 3) and parity["disagreements"] == 2
    assert parity["near_ties"] == 1  # the second face: the SavedModel's top two were 0.01 apart
    assert parity["per_class"] == {"angry": {"faces": 2, "agreement": 0.5}, "fear": {"faces": 1, "agreement": 0.0}}


def test_only_an_affine_transform_is_folded_into_the_edge_model():
    import tensorflow as tf

    from components.model import INPUT_KEY
    from components.preprocessing import decode_images
    from moodloop.core.contracts import FEATURE_IMAGE

    def layer(transform):
        return lambda features: {INPUT_KEY: transform(decode_images(tf.reshape(features[FEATURE_IMAGE], [-1])))}

    assert edge.affine_preprocessing(layer(lambda x: (x / 255.0 - 0.5) / 0.25)) == pytest.approx((4 / 255, -2.0))
    with pytest.raises(ValueError, match="not an affine map"):
        edge.affine_preprocessing(layer(lambda x: tf.sqrt(x)))
