"""Transform's module file: `preprocessing_fn`. Decoding is shared with the exported model's
signatures (components/trainer.py), so serving decodes faces exactly as training did.

TFX's Transform imports this file by path.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components.model import INPUT_KEY
from moodloop.core.contracts import FACE_SIZE, FEATURE_IMAGE, FEATURE_LABEL

LABEL_KEY = "label_xf"


def _property_outputs(grey: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> dict[str, tf.Tensor]:
    """moodloop/core/image_properties.py in the graph: grey [N, 48, 48] float32 in 0..255."""
    laplacian = (
        -4 * grey[:, 1:-1, 1:-1] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
    )
    return {
        "image_brightness": tf.reduce_mean(grey, axis=[1, 2]) / 255.0,
        "image_contrast": tf.math.reduce_std(grey, axis=[1, 2]) / 255.0,
        "image_sharpness": tf.math.reduce_variance(laplacian, axis=[1, 2]),
        "image_width": width,
        "image_height": height,
    }


def pixel_property_outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
    """The inference log's image properties of [N, 48, 48] uint8 faces."""
    count = tf.shape(pixels)[0]
    side = tf.fill([count], tf.constant(FACE_SIZE, tf.int32))
    return _property_outputs(tf.cast(pixels, tf.float32), side, side)


def image_property_outputs(encoded: tf.Tensor) -> dict[str, tf.Tensor]:
    """The inference log's image properties of [N] encoded images, each decoded once more here
    (in C++, beside the model), at 48x48 as the Python definition measures them."""

    def one(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(data, channels=1, expand_animations=False)
        size = tf.shape(image)[:2]
        grey = tf.cond(
            tf.reduce_all(tf.equal(size, FACE_SIZE)),
            lambda: tf.cast(image, tf.float32),
            lambda: tf.round(
                tf.clip_by_value(tf.image.resize(image, [FACE_SIZE, FACE_SIZE], "bicubic", antialias=True), 0, 255)
            ),
        )
        return tf.ensure_shape(grey[..., 0], [FACE_SIZE, FACE_SIZE]), size

    grey, sizes = tf.map_fn(
        one,
        encoded,
        fn_output_signature=(tf.TensorSpec([FACE_SIZE, FACE_SIZE], tf.float32), tf.TensorSpec([2], tf.int32)),
    )
    return _property_outputs(grey, sizes[:, 0], sizes[:, 1])


def decode_images(encoded: tf.Tensor) -> tf.Tensor:
    """[N] encoded JPEG/PNG/... (any size, grey or colour) -> [N, 48, 48, 1] float32 in 0..255."""

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=1, expand_animations=False)
        image = tf.image.resize(image, [FACE_SIZE, FACE_SIZE])
        return tf.ensure_shape(image, [FACE_SIZE, FACE_SIZE, 1])

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([FACE_SIZE, FACE_SIZE, 1], tf.float32))


STATISTIC_DECIMALS = 6


PIXEL_SCALE = 1.0 / 255.0  # pixels 0..255 -> 0..1


def rounded_statistic(value: tf.Tensor) -> tf.Tensor:
    """A float64 statistic rounded to STATISTIC_DECIMALS decimals (half to even, as numpy rounds)."""
    scale = tf.constant(10.0**STATISTIC_DECIMALS, tf.float64)
    return tf.round(value * scale) / scale


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decode, resize to 48x48 grey, standardise with the training set's pixel mean and std."""
    encoded = tf.reshape(inputs[FEATURE_IMAGE], [-1])
    # Written as the multiplication TensorFlow's graph optimiser makes of `/ 255.0` anyway: a
    # notebook that scales the same way gets the same float32 faces, bit for bit.
    pixels = decode_images(encoded) * PIXEL_SCALE
    # Full-pass analyzers: the dataset's statistics become constants of the serving graph.
    # In float64: Beam adds the partial sums up in a different order on every run, and in float32
    # that changed the standardised faces in their last bits, enough to train a different model.
    # Rounded to 1e-6 before the cast: float64 sums of the same pixels in another order (another
    # Beam run, numpy in a notebook) then give the same float32 statistics, bit for bit.
    mean = tf.cast(rounded_statistic(tft.mean(pixels, output_dtype=tf.float64)), tf.float32)
    std = tf.sqrt(tf.cast(rounded_statistic(tft.var(pixels, output_dtype=tf.float64)), tf.float32) + 1e-6)
    # Times the reciprocal, again as the graph optimiser computes a division by a constant.
    outputs = {INPUT_KEY: (pixels - mean) * tf.math.reciprocal(std)}
    if FEATURE_LABEL in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[FEATURE_LABEL], [-1])
    return outputs
