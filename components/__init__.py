"""The TFX training stage (components/pipeline.py wires it; docs/training.md explains it).

TensorFlow 2.16 routes `tf.keras` to Keras 3 unless TF_USE_LEGACY_KERAS is set when `tf.keras` is
first touched; TFX 1.16, TFMA and moodloop's models use Keras 2 (`tf_keras`). It is set here, the
one place: Python runs this file before any module of the stage, in every process that trains,
evaluates, exports or adopts a model (TFX's executors, Beam's workers, the tests, the benchmarks).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
