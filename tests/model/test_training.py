"""The Trainer's parts that decide model quality, without a pipeline run: the input pipeline's
in-memory split, temperature scaling and its error measure, warm start, and AutoGraph kept out
of Keras (which cost about 28 s per training process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from components import calibration


def _sampled(logits: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Labels drawn from softmax(logits / T): a model whose calibrated temperature is exactly T."""
    rng = np.random.default_rng(seed)
    probabilities = softmax(logits / temperature, axis=1)
    return np.array([rng.choice(len(p), p=p) for p in probabilities])


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    logits = np.random.default_rng(0).normal(0, 3, size=(4000, 7))
    for true_t in (0.5, 1.0, 2.5):
        fitted = calibration.fit_temperature(logits, _sampled(logits, true_t, seed=1))
        assert fitted == pytest.approx(true_t, rel=0.1)


def test_temperature_scaling_lowers_the_calibration_error_of_an_overconfident_model_and_keeps_its_answers():
    logits = np.random.default_rng(2).normal(0, 1.5, size=(6000, 7))
    labels = _sampled(logits, 1.0, seed=3)
    overconfident = logits * 3  # the same ranking, three times too sure
    result = calibration.calibrate(overconfident, labels)
    assert result.temperature == pytest.approx(3.0, rel=0.1)
    assert result.ece_before > 0.15
    assert result.ece_after < 0.03
    assert result.fit_faces == result.check_faces == 3000
    before = softmax(overconfident, axis=1).argmax(1)
    after = softmax(overconfident / result.temperature, axis=1).argmax(1)
    np.testing.assert_array_equal(before, after)


def test_expected_calibration_error_is_the_weighted_gap_between_accuracy_and_confidence():
    # Two bins: 100 faces at confidence 0.9 with 60 % right, 100 at 0.55 with 55 % right.
    probabilities = np.zeros((200, 7))
    probabilities[:100, 0], probabilities[:100, 1] = 0.9, 0.1
    probabilities[100:, 0], probabilities[100:, 1] = 0.55, 0.45
    labels = np.array([0] * 60 + [1] * 40 + [0] * 55 + [1] * 45)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.3 + 0.5 * 0.0)


def test_too_few_held_out_faces_keep_the_raw_softmax():
    logits = np.random.default_rng(4).normal(size=(30, 7))
    result = calibration.calibrate(logits, np.zeros(30, dtype=int))
    assert result.temperature == 1.0 and result.fit_faces == 0


def test_autograph_leaves_keras_code_alone():
    import tf_keras as keras
    from tensorflow.python.autograph.impl import conversion

    import components.model  # noqa: F401  (installs the rule)

    assert conversion.is_allowlisted(keras.layers.Dense.call)
    assert conversion.is_allowlisted(keras.Model.train_step)


def test_warm_start_loads_the_champions_weights_only_into_the_same_architecture(tmp_path):
    from components.model import build_model
    from components.warm_start import save_weights, warm_start

    champion = build_model("tiny", augment=False)
    champion.fit(np.random.rand(64, 48, 48, 1), np.arange(64) % 7, epochs=1, verbose=0)
    save_weights(champion, str(tmp_path))

    same = build_model("tiny", augment=False)
    result = warm_start(same, str(tmp_path))
    assert result.warm and str(tmp_path) in result.reason
    for a, b in zip(champion.get_weights(), same.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    other = build_model("small", augment=False)
    untouched = [w.copy() for w in other.get_weights()]
    result = warm_start(other, str(tmp_path))
    assert not result.warm and "differs" in result.reason
    for a, b in zip(untouched, other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    assert not warm_start(same, None).warm
    assert "carries no weights" in warm_start(same, str(tmp_path / "adopted")).reason


def test_warm_start_is_kept_only_while_the_champion_still_fits_todays_faces(tmp_path):
    """The champion's weights are checked on today's held-out faces against its own reference
    accuracy: close enough keeps the warm start, a drop beyond the setting makes the run cold."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.model import build_model
    from components.warm_start import WarmStart, still_fits
    from moodloop.core.contracts import EMOTIONS, REFERENCE_PROFILE

    model = build_model("tiny", augment=False)
    faces = np.random.default_rng(0).random((200, 48, 48, 1), dtype=np.float32)
    predicted = model.predict(faces, verbose=0).argmax(axis=1)
    profile = tmp_path / REFERENCE_PROFILE
    profile.parent.mkdir(parents=True)
    # When trained, the champion got 80 % of its 10 held-out faces right (one row has no label).
    rows = {"label": ["happy"] * 8 + ["sad"] * 2 + [None], "predicted_class": ["happy"] * 10 + ["sad"]}
    pq.write_table(pa.table(rows), profile)
    warm = WarmStart(True, "from the champion's weights", str(tmp_path))

    # Today's labels agree with 70 % of its answers: 10 points lower.
    labels = predicted.copy()
    labels[:60] = (labels[:60] + 1) % len(EMOTIONS)
    kept = still_fits(model, faces, labels, warm, max_drop=0.15)
    assert kept.warm and "70.0% on today's 200 held-out faces, 80.0% on its own" in kept.reason
    moved = still_fits(model, faces, labels, warm, max_drop=0.05)
    assert not moved.warm and moved.reason.startswith("the data has moved") and moved.champion == str(tmp_path)
    # Nothing to check against: the warm start stays and says so; a cold start stays cold.
    unprofiled = WarmStart(True, "from the champion's weights", str(tmp_path / "adopted"))
    assert "no reference profile" in still_fits(model, faces, labels, unprofiled, 0.05).reason
    cold = WarmStart(False, "no champion yet")
    assert still_fits(model, faces, labels, cold, 0.0) is cold


def test_a_retrain_on_faces_labelled_after_a_drift_trains_cold(tmp_path):
    """The labelling queue asks only after a drift; when the newest curated span is its answers
    (faces_from=labelled), the Trainer does not warm-start from the champion, whose fit check would
    measure on mostly earlier faces (the stack drill: a warm run's 3 epochs left today's faces
    unlearned). Any other newest span keeps the warm-start rules; the source is read at compile time
    from the newest span's manifest."""
    from components.model import build_model
    from components.pipeline import newest_span_source
    from components.trainer import _warm_or_cold
    from components.warm_start import save_weights
    from moodloop.core.settings import TrainingSettings

    champion = build_model("tiny", augment=False)
    save_weights(champion, str(tmp_path / "champion"))
    model = build_model("tiny", augment=False)
    untouched = [w.copy() for w in model.get_weights()]
    training = TrainingSettings()
    after_drift = _warm_or_cold(model, training, str(tmp_path / "champion"), "labelled")
    assert not after_drift.warm and "labelled on the loop's request after a drift" in after_drift.reason
    for a, b in zip(untouched, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the champion's weights were not loaded
    assert _warm_or_cold(model, training, str(tmp_path / "champion"), "batch").warm

    curated = tmp_path / "curated"
    assert newest_span_source(curated) is None
    for span, source in ((1, "synthetic"), (2, "labelled"), (10, "batch")):
        (curated / f"span-{span:05d}").mkdir(parents=True)
        (curated / f"span-{span:05d}" / "manifest.json").write_text(json.dumps({"faces_from": source}))
    assert newest_span_source(curated) == "batch"  # span 10, not span 2: by number


def test_self_training_runs_only_on_a_retrain_on_the_labelling_queues_answers(tmp_path):
    """The Trainer is given the kept live faces to pseudo-label only when the newest span is the
    queue's answers and there is a queue (its `since` says where the kept faces began), and only
    with self-training on; it keeps the faces it is sure of, with its own answer as their label."""
    from components.pipeline import PipelineConfig, live_faces_since_drift, trainer_config
    from components.self_training import pseudo_label
    from moodloop.core.settings import Settings

    settings = Settings.from_env(home=tmp_path)
    config = PipelineConfig.from_settings(settings)
    curated, labelling_dir = Path(config.curated_dir), Path(config.labelling_dir)
    (curated / "span-00001").mkdir(parents=True)
    manifest = curated / "span-00001" / "manifest.json"
    manifest.write_text(json.dumps({"faces_from": "batch", "written": 10}))
    labelling_dir.mkdir(parents=True)
    (labelling_dir / "queue.json").write_text(json.dumps({"since": 1764900000.5, "faces": []}))
    assert trainer_config(config)["self_training"] is None  # a regular batch: no drift behind it
    manifest.write_text(json.dumps({"faces_from": "labelled", "written": 10}))
    assert trainer_config(config)["self_training"] == {
        "log_url": str(settings.inference_log_url),
        "since": 1764900000.5,
        "labelling_dir": str(labelling_dir),
    }
    no_self_training = PipelineConfig.from_settings(settings, self_train=False)
    assert trainer_config(no_self_training)["self_training"] is None
    # ... while the A/B gate still judges on the feedback-labelled ones among the same kept faces
    assert live_faces_since_drift(no_self_training, "labelled") == trainer_config(config)["self_training"]
    (labelling_dir / "queue.json").unlink()
    assert trainer_config(config)["self_training"] is None  # the answers came some other way

    probabilities = np.array([[0.95, 0.05, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0], [0, 0, 0, 0.9, 0.1, 0, 0]])
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    pseudo = pseudo_label(probabilities, images, 0.9)
    assert pseudo.labels.tolist() == [0, 3] and pseudo.images.ravel().tolist() == [0.0, 2.0]
    assert pseudo.report == {
        "unanswered_faces": 3,
        "pseudo_labelled": 2,
        "threshold": 0.9,
        "per_class": [1, 0, 0, 1, 0, 0, 0],
    }
    assert pseudo_label(np.zeros((0, 7)), np.zeros((0, 48, 48, 1)), 0.9).report["pseudo_labelled"] == 0


class _Answers:
    """A stand-in model that answers each face with a fixed distribution: face value v -> class v % 7
    with probability `sure`, except faces listed in `wrong`, answered as class 6."""

    def __init__(self, sure: float, wrong: tuple[int, ...] = ()) -> None:
        self.sure, self.wrong = sure, wrong

    def predict(self, images, batch_size=None, verbose=0):
        values = np.asarray(images).reshape(len(images), -1)[:, 0].astype(int)
        classes = np.where(np.isin(values, self.wrong), 6, values % 7)
        out = np.full((len(values), 7), (1 - self.sure) / 6)
        out[np.arange(len(values)), classes] = self.sure
        return out


def test_self_training_keeps_the_second_fit_only_when_people_s_labels_do_not_say_it_is_worse(monkeypatch):
    """components/trainer.py _self_train: the first fit pseudo-labels the unanswered faces it is sure
    of, a fresh model is fitted on the training faces and those, and that one is the candidate
    unless it scores lower on the held-out faces (people's labels) than the first."""
    from components import live_faces, self_training, trainer
    from moodloop.core.settings import TrainingSettings

    unanswered = np.arange(10, 30, dtype=np.float32).reshape(20, 1, 1, 1)
    monkeypatch.setattr(live_faces, "unanswered_faces", lambda pool, most: [b"png"] * 20)
    monkeypatch.setattr(self_training, "transformed", lambda layer, encoded: unanswered)

    class TransformOutput:
        def transform_features_layer(self):
            return None

    x_eval = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)
    y_eval = np.arange(7)
    faces = (np.zeros((3, 1, 1, 1), np.float32), np.zeros(3, np.int64), x_eval, y_eval)
    fitted = []

    def fit(model, x, y, class_weight):
        fitted.append((len(y), sorted(class_weight)))
        return {"loss": [1.0]}

    first = _Answers(0.95)
    for second, kept in ((_Answers(0.95), "second"), (_Answers(0.95, wrong=(0, 1)), "first")):
        fitted.clear()
        model, curves, report = trainer._self_train(
            first, lambda s=second: s, fit, None, TrainingSettings(), TransformOutput(), faces
        )
        assert fitted == [(3 + 20, list(range(7)))]  # the 3 training faces and the 20 pseudo-labelled
        assert report["pseudo_labelled"] == 20 and report["kept"] == kept
        assert report["first_fit_held_out_accuracy"] == 1.0
        assert (model, curves) == ((second, {"loss": [1.0]}) if kept == "second" else (first, None))
    unsure = trainer._self_train(_Answers(0.5), lambda: None, fit, None, TrainingSettings(), TransformOutput(), faces)
    assert unsure[1] is None and unsure[2]["pseudo_labelled"] == 0  # nothing sure enough: no second fit


def test_canonical_order_depends_on_the_faces_only_not_on_their_order_or_standardisation():
    from components.model import in_canonical_order

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (500, 48, 48, 1)).astype(np.uint8)
    labels = rng.integers(0, 7, 500)
    pixels[7], labels[7] = pixels[3], 5  # a duplicate face with another label
    ordered, ordered_labels = in_canonical_order(pixels, labels)
    shuffled = rng.permutation(500)
    # What Transform writes: the same faces standardised, in another order.
    standardised = ((pixels[shuffled] / 255.0 - 0.48) / 0.21).astype(np.float32)
    again, again_labels = in_canonical_order(standardised, labels[shuffled])
    np.testing.assert_array_equal(again_labels, ordered_labels)
    np.testing.assert_allclose(again, (ordered / 255.0 - 0.48) / 0.21, rtol=1e-5)
    assert sorted(map(bytes, ordered)) == sorted(map(bytes, pixels))  # a permutation: nothing lost


def test_standardisation_statistics_do_not_depend_on_the_summation_order():
    """Transform's mean and variance are float64 sums whose last bits change with the order Beam
    (or numpy) adds them up in. Near the middle between two float32 numbers, one float64 ulp
    decides which float32 comes out; rounded to STATISTIC_DECIMALS first, both give the same."""
    import tensorflow as tf

    from components.preprocessing import STATISTIC_DECIMALS, rounded_statistic

    for statistic in (0.5001763, 0.0730759, 0.2703255):  # a pixel mean, variances
        low = np.float32(statistic)
        middle = (np.float64(low) + np.float64(np.nextafter(low, np.float32(1)))) / 2
        sums = np.array([np.nextafter(middle, 0.0), np.nextafter(middle, 1.0)])  # two orders, one ulp apart
        assert np.float32(sums[0]) != np.float32(sums[1])  # unrounded: two different standardisations
        rounded = rounded_statistic(tf.constant(sums, tf.float64)).numpy()
        assert np.float32(rounded[0]) == np.float32(rounded[1])
        np.testing.assert_array_equal(rounded, np.round(sums, STATISTIC_DECIMALS))  # as the bare fit rounds


def test_a_cold_fit_goes_on_while_its_held_out_loss_improves_and_keeps_its_best_epoch():
    """components/model.py training_callbacks: `epochs` always run; then on while the held-out loss
    improves, to `max_epochs` at most, stopping `patience` epochs after the best, whose weights are
    kept. A problem still being learned runs past `epochs`; one whose held-out loss only gets worse
    (labels it cannot learn) stops `patience` epochs after its best watched epoch (the planned
    fit's last is the first watched) and keeps that epoch's weights."""
    import tf_keras as keras

    from components.model import training_callbacks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    learnable = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def fit(labels: np.ndarray, epochs: int, max_epochs: int, patience: int):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
        model.compile(keras.optimizers.Adam(0.003), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks, planned = training_callbacks(epochs, max_epochs, patience)
        history = model.fit(
            x[:384],
            labels[:384],
            validation_data=(x[384:], labels[384:]),
            epochs=planned,
            verbose=0,
            callbacks=callbacks,
        )
        return model, history.history["val_loss"]

    assert training_callbacks(10, 10, 5)[1] == 10 and len(training_callbacks(10, 10, 5)[0]) == 1  # exactly 10
    assert training_callbacks(10, 40, 0)[1] == 10  # patience 0: exactly `epochs`
    _, losses = fit(learnable, epochs=3, max_epochs=30, patience=3)
    assert len(losses) > 3  # still improving after 3 epochs: it went on

    noise = rng.integers(0, 2, 512)  # nothing to learn: the held-out loss rises as it memorises
    model, losses = fit(noise, epochs=5, max_epochs=60, patience=3)
    assert len(losses) < 60, "it should stop once the held-out loss stops improving"
    best = 4 + int(np.argmin(losses[4:]))  # watched from the 5th epoch on (index 4): the planned fit's last
    assert len(losses) == best + 1 + 3  # patience epochs after the best
    kept = model.evaluate(x[384:], noise[384:], verbose=0)
    assert kept == pytest.approx(losses[best], rel=1e-4)  # the best epoch's weights, not the last's
