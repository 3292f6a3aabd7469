"""TFX module file: `preprocessing_fn` (Transform) and `run_fn` (Trainer).

TFX executors import this file by path, so it keeps to the contracts (moodloop.contracts) and
the model builder. The exported SavedModel embeds the Transform graph: serving decodes and
normalises images exactly as training did.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from components import plots  # noqa: E402
from components.model import INPUT_KEY, build_model, class_weights  # noqa: E402
from moodloop.contracts import (  # noqa: E402
    EMBEDDING_DIMS,
    EMOTIONS,
    FACE_SIZE,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    NUM_CLASSES,
    OUTPUT_CLASS_IDS,
    OUTPUT_CLASSES,
    OUTPUT_EMBEDDING,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)

LABEL_KEY = "label_xf"


def decode_images(encoded: tf.Tensor) -> tf.Tensor:
    """[N] encoded JPEG/PNG/... (any size, grey or colour) -> [N, 48, 48, 1] float32 in 0..255."""

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=1, expand_animations=False)
        image = tf.image.resize(image, [FACE_SIZE, FACE_SIZE])
        return tf.ensure_shape(image, [FACE_SIZE, FACE_SIZE, 1])

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([FACE_SIZE, FACE_SIZE, 1], tf.float32))


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decode, resize to 48x48 grey, standardise with the training set's pixel mean and std."""
    encoded = tf.reshape(inputs[FEATURE_IMAGE], [-1])
    pixels = decode_images(encoded) / 255.0
    # Full-pass analyzers: the dataset's statistics become constants of the serving graph.
    mean = tft.mean(pixels)
    std = tf.sqrt(tft.var(pixels) + 1e-6)
    outputs = {INPUT_KEY: (pixels - mean) / std}
    if FEATURE_LABEL in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[FEATURE_LABEL], [-1])
    return outputs


def _dataset(fn_args: tfx.components.FnArgs, files: list[str], tf_transform_output, batch_size: int, shuffle: bool):
    return fn_args.data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY, num_epochs=1, shuffle=shuffle),
        tf_transform_output.transformed_metadata.schema,
    )


def _label_counts(dataset: tf.data.Dataset) -> list[int]:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for _, labels in dataset:
        counts += np.bincount(labels.numpy().reshape(-1), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts.tolist()


OUTPUT_LAYER = "probabilities"  # the classifier's last layer (components/model.py)


def embedder(model) -> keras.Model:
    """The penultimate layer: what the classifier sees of a face, for embedding drift."""
    return keras.Model(model.inputs, model.get_layer(OUTPUT_LAYER).input)


def fit_projection(model, dataset: tf.data.Dataset, max_faces: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the penultimate layer on training faces: (mean [D], components [D, EMBEDDING_DIMS]).
    Fitted once per model, baked into the SavedModel: live and reference embeddings share one space."""
    encode, hidden, seen = embedder(model), [], 0
    for features, _ in dataset:
        hidden.append(encode(features, training=False).numpy())
        seen += len(hidden[-1])
        if seen >= max_faces:
            break
    values = np.concatenate(hidden)[:max_faces].astype(np.float64)
    mean = values.mean(axis=0)
    _, _, vt = np.linalg.svd(values - mean, full_matrices=False)
    components = np.zeros((values.shape[1], EMBEDDING_DIMS))
    kept = vt[:EMBEDDING_DIMS].T
    components[:, : kept.shape[1]] = kept
    return mean.astype(np.float32), components.astype(np.float32)


class _ServingModule(tf.Module):
    """The three signatures of the model contract, all through the Transform graph."""

    def __init__(self, model, tf_transform_output, projection: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.model = model
        self.embedder = embedder(model)
        self.output_layer = model.get_layer(OUTPUT_LAYER)
        width = self.embedder.output_shape[-1]
        if projection is None:  # no fitted PCA (test models): the first EMBEDDING_DIMS units
            projection = (np.zeros(width, np.float32), np.eye(width, EMBEDDING_DIMS, dtype=np.float32))
        self._embedding_mean = tf.constant(projection[0], tf.float32)
        self._embedding_components = tf.constant(projection[1], tf.float32)
        self.tft_layer = tf_transform_output.transform_features_layer()
        raw_spec = tf_transform_output.raw_feature_spec()
        raw_spec.pop(FEATURE_LABEL, None)
        self._raw_spec = raw_spec
        self._class_names = tf.constant(list(EMOTIONS))

    def _predict(self, encoded: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer({FEATURE_IMAGE: tf.reshape(encoded, [-1, 1])})
        hidden = self.embedder(transformed[INPUT_KEY], training=False)
        probabilities = self.output_layer(hidden)
        class_ids = tf.argmax(probabilities, axis=-1)
        return {
            OUTPUT_PROBABILITIES: probabilities,
            OUTPUT_CLASS_IDS: class_ids,
            OUTPUT_CLASSES: tf.gather(self._class_names, class_ids),
            OUTPUT_EMBEDDING: tf.matmul(hidden - self._embedding_mean, self._embedding_components),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self._predict(images)

    @tf.function(input_signature=[tf.TensorSpec([None, FACE_SIZE, FACE_SIZE], tf.uint8, name="pixels")])
    def serve_pixels(self, pixels):
        # Re-encoding keeps a single preprocessing path (the Transform graph) for every input.
        encoded = tf.map_fn(
            lambda p: tf.io.encode_png(p[..., tf.newaxis]), pixels, fn_output_signature=tf.TensorSpec([], tf.string)
        )
        return self._predict(encoded)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        features = tf.io.parse_example(examples, self._raw_spec)
        return self._predict(features[FEATURE_IMAGE])


def export_serving_model(model, tf_transform_output, export_dir: str, projection=None) -> None:
    module = _ServingModule(model, tf_transform_output, projection)
    signatures = {
        SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
        SIGNATURE_PIXELS: module.serve_pixels.get_concrete_function(),
        SIGNATURE_EXAMPLES: module.serve_examples.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    config = fn_args.custom_config or {}
    epochs = int(config.get("epochs", 10))
    batch_size = int(config.get("batch_size", 64))
    keras.utils.set_random_seed(int(config.get("seed", 0)))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    train = _dataset(fn_args, fn_args.train_files, tf_transform_output, batch_size, shuffle=True)
    evaluation = _dataset(fn_args, fn_args.eval_files, tf_transform_output, batch_size, shuffle=False)
    counts = _label_counts(train)
    weights = class_weights(counts)
    print(f"training on {sum(counts)} faces, per class: {dict(zip(EMOTIONS, counts, strict=True))}", flush=True)
    print(f"class weights: {', '.join(f'{EMOTIONS[k]} {w:.2f}' for k, w in weights.items())}", flush=True)

    model = build_model(
        config.get("model_size", "small"),
        float(config.get("learning_rate", 1e-3)),
        augment=bool(config.get("augment", True)),
    )
    model.summary(print_fn=lambda line: print(line, flush=True))
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
    ]
    history = model.fit(
        train.prefetch(tf.data.AUTOTUNE),
        validation_data=evaluation.prefetch(tf.data.AUTOTUNE),
        epochs=epochs,
        class_weight=weights,
        callbacks=callbacks,
        verbose=2,  # one line per epoch: readable in the Airflow task log
    )
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as fh:
        json.dump({"history": curves, "train_label_counts": counts}, fh, indent=1)
    plots.training_curves(curves, os.path.join(fn_args.model_run_dir, plots.TRAINING_CURVES_PNG))
    projection = fit_projection(model, train)
    export_serving_model(model, tf_transform_output, fn_args.serving_model_dir, projection)
