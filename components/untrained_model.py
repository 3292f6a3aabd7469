"""Contract-compatible untrained SavedModels, made in seconds: for the serving tests, the
benchmarks and CI's TF Serving job (`python -m components.untrained_model MODEL_BASE`).

They go through the pipeline's own export (`components.trainer.export_serving_model`, on the model
contract of components/model_contract.py), so the signatures are exactly those a pushed model has;
only the Transform graph is replaced by a fixed standardisation and the weights are untrained
(different per seed, so versions answer differently).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from components.model import INPUT_KEY, build_model
from components.preprocessing import decode_images
from components.trainer import export_serving_model
from moodloop.core.contracts import FEATURE_IMAGE, FEATURE_LABEL
from moodloop.core.files import publish_dir


class _FixedTransform(keras.layers.Layer):
    def call(self, features):
        pixels = decode_images(tf.reshape(features[FEATURE_IMAGE], [-1])) / 255.0
        return {INPUT_KEY: (pixels - 0.5) / 0.25}


class _FixedTransformOutput:
    """The two things export_serving_model asks of a TFTransformOutput."""

    def transform_features_layer(self):
        return _FixedTransform()

    def raw_feature_spec(self):
        return {FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string), FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64)}


def export_version(model_base: Path, version: int, seed: int = 0, size: str = "tiny") -> Path:
    """Write <model_base>/<version>/ atomically (staging folder + rename), as the Pusher does."""
    keras.utils.set_random_seed(seed)
    model = build_model(size, augment=False)
    target = Path(model_base) / str(version)
    with publish_dir(target) as staging:
        export_serving_model(model, _FixedTransformOutput(), str(staging))
    return target


# The versions the serving tests expect: version -> seed.
TEST_VERSIONS = {1: 1, 2: 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the serving tests' model versions (for a real TF Serving).")
    parser.add_argument("model_base", type=Path, help="folder to hold <version>/ SavedModels")
    args = parser.parse_args(argv)
    args.model_base.mkdir(parents=True, exist_ok=True)
    for version, seed in TEST_VERSIONS.items():
        print(export_version(args.model_base, version, seed=seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
