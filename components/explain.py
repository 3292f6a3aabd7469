"""Explanations computed by the model itself: the `serving_explain` signature's heatmaps.

Every exported version carries the signature (components/trainer.py, components/adopt.py), so TF
Serving serves explanations as it serves predictions; the gateway only colours and places them.

The method is HiResCAM (Draelos & Carin 2020), the element-wise form of Grad-CAM: the predicted
class's score differentiated with respect to a convolutional block's feature maps, multiplied by
those maps position by position, summed over channels, negative evidence cut. Two measured
choices, on synthetic faces, where the generator knows where it drew the eyes, brows and mouth
(tests/model/test_pipeline.py checks the outcome on every pushed model):
- HiResCAM, not Grad-CAM's channel weights averaged over positions: on the same models, Grad-CAM
  put 0.8-1.6x the expressive parts' share of the face on them (no better than a blur of the
  face), HiResCAM 2.2-3.4x.
- the deepest block whose maps are at least half the face's side (24x24 of a 48x48 face), not
  the last one (12x12, or 6x6 for the larger models): a brow and an eye are 2-4 pixels apart, and
  a 4-pixel cell cannot tell them apart (the last block gave 1.4-2.3x).
"""

from __future__ import annotations

import tensorflow as tf

from moodloop.core.contracts import FACE_SIZE

MIN_MAP_SHARE = 0.5  # the explained block's maps are at least this share of the input's side


def explained_layer(model):
    """The deepest layer with [N, H, W, C] output and H, W >= MIN_MAP_SHARE of the input's; None
    when the model has none (then the input itself is explained: gradient x input)."""
    _, height, width, _ = model.inputs[0].shape
    chosen = None
    for layer in model.layers:
        shape = getattr(layer, "output_shape", None)
        if not isinstance(shape, tuple) or len(shape) != 4 or type(layer).__name__ == "InputLayer":
            continue
        if height and width and shape[1] and shape[1] >= MIN_MAP_SHARE * height and shape[2] >= MIN_MAP_SHARE * width:
            chosen = layer
    return chosen


def class_activation_map(tape: tf.GradientTape, score: tf.Tensor, maps: tf.Tensor) -> tf.Tensor:
    """HiResCAM: [N, H, W] >= 0, from `score` [N] (one class per row) taped over `maps` [N, H, W, C]."""
    gradients = tape.gradient(score, maps)
    return tf.nn.relu(tf.reduce_sum(gradients * maps, axis=-1))


def face_heatmap(cam: tf.Tensor) -> tf.Tensor:
    """[N, FACE_SIZE, FACE_SIZE] in 0..1: resized to the face crop and scaled by each face's
    maximum (all zeros when nothing spoke for the class)."""
    resized = tf.image.resize(cam[..., tf.newaxis], [FACE_SIZE, FACE_SIZE])[..., 0]
    peak = tf.reduce_max(resized, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(resized, peak)
