"""The model contract, written once: the SavedModel every version of moodloop serves.

Whatever the classifier (moodloop's CNN behind the Transform graph in components/trainer.py, or a
team's own network with its own preprocessing in components/adopt.py), a version has:
- four signatures (moodloop/core/contracts.py names them): encoded images, [N, 48, 48] uint8 pixels and
  serialized tf.Examples, each answering probabilities, class_ids, classes and the embedding (the
  feature layer projected by a PCA baked into the model); the images and pixels signatures add the
  image properties the bias audit and the drift job slice by; and the explanation heatmaps;
- warm-up records in `assets.extra/tf_serving_warmup_requests` (one request per signature), which
  TF Serving and the gateway replay before a version answers.

A classifier supplies four things by subclassing `ServingModule`: how encoded images and raw pixels
become its input (`from_encoded`, `from_pixels`), its feature layer and calibrated probabilities
(`classify`), and the convolutional maps and class scores the heatmap is taken from
(`explain_scores`). `export` traces and saves the signatures; `write_warmup_requests` stamps them.

The signatures are traced with autograph off: they hold no Python control flow on tensors, and
autograph converting every Keras layer's `call` made the first trace of mini-Xception take 12 s
instead of half a second on 2 cores.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from components import explain
from components.preprocessing import image_property_outputs, pixel_property_outputs
from moodloop.core.contracts import (
    EMBEDDING_DIMS,
    EMOTIONS,
    FACE_SIZE,
    FEATURE_IMAGE,
    OUTPUT_CLASS_IDS,
    OUTPUT_CLASSES,
    OUTPUT_EMBEDDING,
    OUTPUT_HEATMAP,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)

IMAGES_SPEC = tf.TensorSpec([None], tf.string, name="images")
PIXELS_SPEC = tf.TensorSpec([None, FACE_SIZE, FACE_SIZE], tf.uint8, name="pixels")
EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")
# What a request's tf.Example holds: the image alone (the label and slices are training data only).
REQUEST_FEATURES = {FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string)}


class ServingModule(tf.Module):
    """The four signatures of the model contract around one classifier (subclasses supply it)."""

    def __init__(self, width: int) -> None:
        """`width`: the feature layer's units. The PCA projection is a pair of variables, not
        constants: a caller may fit it on the module's own preprocessing before export."""
        super().__init__()
        self.embedding_mean = tf.Variable(tf.zeros([width]), trainable=False)
        # Until a PCA is fitted (the untrained test models): the first EMBEDDING_DIMS units.
        self.embedding_components = tf.Variable(tf.eye(width, EMBEDDING_DIMS), trainable=False)
        self._class_names = tf.constant(list(EMOTIONS))

    def set_projection(self, mean: np.ndarray, components: np.ndarray) -> None:
        self.embedding_mean.assign(mean)
        self.embedding_components.assign(components)

    # ------------------------------------------------------------ what a classifier supplies
    def from_encoded(self, encoded: tf.Tensor) -> tf.Tensor:
        """[N] encoded images (PNG, JPEG, ...) -> the classifier's input batch."""
        raise NotImplementedError

    def from_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
        """[N, 48, 48] uint8 face crops -> the classifier's input batch."""
        raise NotImplementedError

    def classify(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """-> (feature layer [N, width], probabilities [N, 7] in the contract's class order)."""
        raise NotImplementedError

    def explain_scores(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """-> (the explained convolutional maps [N, h, w, c], class scores [N, 7] in the
        contract's order), computed from `inputs` so that a gradient tape can follow them."""
        raise NotImplementedError

    # ------------------------------------------------------------ the contract
    def _predict(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden, probabilities = self.classify(inputs)
        class_ids = tf.argmax(probabilities, axis=-1)
        embedding = tf.matmul(tf.cast(hidden, tf.float32) - self.embedding_mean, self.embedding_components)
        return {
            OUTPUT_PROBABILITIES: tf.cast(probabilities, tf.float32),
            OUTPUT_CLASS_IDS: class_ids,
            OUTPUT_CLASSES: tf.gather(self._class_names, class_ids),
            OUTPUT_EMBEDDING: embedding,
        }

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
    def serve_images(self, images):
        return {**self._predict(self.from_encoded(images)), **image_property_outputs(images)}

    @tf.function(input_signature=[PIXELS_SPEC], autograph=False)
    def serve_pixels(self, pixels):
        return {**self._predict(self.from_pixels(pixels)), **pixel_property_outputs(pixels)}

    @tf.function(input_signature=[EXAMPLES_SPEC], autograph=False)
    def serve_examples(self, examples):
        features = tf.io.parse_example(examples, REQUEST_FEATURES)
        return self._predict(self.from_encoded(features[FEATURE_IMAGE]))

    @tf.function(input_signature=[PIXELS_SPEC], autograph=False)
    def serve_explain(self, pixels):
        """Why: a heatmap per face of where the evidence for its predicted class lies (components/explain.py)."""
        inputs = self.from_pixels(pixels)
        with tf.GradientTape() as tape:
            tape.watch(inputs)  # records every step from the input, whether or not the weights are trainable
            maps, scores = self.explain_scores(inputs)
            scores = tf.cast(scores, tf.float32)
            class_ids = tf.argmax(scores, axis=-1)
            score = tf.gather(scores, class_ids, batch_dims=1)
        heatmap = explain.face_heatmap(explain.class_activation_map(tape, score, maps))
        return {OUTPUT_HEATMAP: heatmap, OUTPUT_CLASS_IDS: class_ids}


def export(module: ServingModule, export_dir: str | os.PathLike) -> None:
    """Trace the four signatures and save the module as a SavedModel in `export_dir`."""
    signatures = {
        SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
        SIGNATURE_PIXELS: module.serve_pixels.get_concrete_function(),
        SIGNATURE_EXAMPLES: module.serve_examples.get_concrete_function(),
        SIGNATURE_EXPLAIN: module.serve_explain.get_concrete_function(),
    }
    tf.saved_model.save(module, str(export_dir), signatures=signatures)


def encode_pngs(pixels: tf.Tensor) -> tf.Tensor:
    """[N, 48, 48] uint8 -> [N] PNGs (for a classifier whose one preprocessing path starts from
    encoded images, such as the Transform graph)."""
    return tf.map_fn(
        lambda p: tf.io.encode_png(p[..., tf.newaxis]), pixels, fn_output_signature=tf.TensorSpec([], tf.string)
    )


def example_images(serialized: list[bytes]) -> list[bytes]:
    """The encoded image of each serialized tf.Example."""
    return [tf.train.Example.FromString(e).features.feature[FEATURE_IMAGE].bytes_list.value[0] for e in serialized]


WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")  # TF Serving's name for it


def write_warmup_requests(model_dir: str, model_name: str, serialized_examples: list[bytes]) -> str:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per signature of the contract, the
    images and examples signatures on the given faces (serialized tf.Examples), the pixel ones on a
    blank face. -> the file's path."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    images = example_images(serialized_examples)
    blank = tf.make_tensor_proto(np.zeros((1, FACE_SIZE, FACE_SIZE), np.uint8))
    requests = {
        SIGNATURE_IMAGES: {"images": tf.make_tensor_proto(images)},
        SIGNATURE_PIXELS: {"pixels": blank},
        SIGNATURE_EXAMPLES: {"examples": tf.make_tensor_proto(serialized_examples)},
        SIGNATURE_EXPLAIN: {"pixels": blank},
    }
    path = os.path.join(model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto)
            record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(record.SerializeToString())
    return path
