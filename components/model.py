"""The emotion classifier: a VGG-style CNN (tf_keras / Keras 2, as TFX 1.16 requires).

The architecture follows the VGG variant that reaches 73.28 % on FER2013 (Khaireddin & Chen
2021): stages of two 3x3 conv + BatchNorm + ReLU, max-pooling and dropout, then dense layers.
`size` scales the widths: "vgg" is the paper's (64-128-256-512, 2x1024 dense; a GPU job),
"medium" half of it, "small" the default for a 2-core CPU (10k faces, 10 epochs in minutes),
"tiny" for tests.
"""

from __future__ import annotations

import numpy as np
import tf_keras as keras
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import config_lib as autograph_rules

from moodloop.core.contracts import FACE_SIZE, NUM_CLASSES


def keep_autograph_out_of_tf_keras() -> None:
    """AutoGraph must not transpile tf_keras's own code.

    TensorFlow's rules exempt the `keras` package but not `tf_keras` (Keras 2, which TFX 1.16
    needs), so the first `fit` of every process converted all of Keras's layer and training code
    to graph code: about 28 s on 2 cores, before one step ran, and about 2 s more per new model.
    Keras's code is already graph-safe (that is why `keras` is exempt); ours still converts.
    """
    rule = autograph_rules.DoNotConvert("tf_keras")
    if not any(r.matches("tf_keras") for r in autograph_config.CONVERSION_RULES if isinstance(r, type(rule))):
        autograph_config.CONVERSION_RULES = (rule, *autograph_config.CONVERSION_RULES)


keep_autograph_out_of_tf_keras()

# size -> (filters per stage, convs per stage, dense units per dense layer, dense layers)
MODEL_SIZES: dict[str, tuple[tuple[int, ...], int, int, int]] = {
    "tiny": ((8, 16, 32), 1, 64, 1),
    "small": ((16, 32, 64), 1, 128, 1),
    "medium": ((32, 64, 128, 256), 2, 512, 1),
    "vgg": ((64, 128, 256, 512), 2, 1024, 2),
}
INPUT_KEY = "image_xf"  # the transformed feature the model reads


def augmentation() -> keras.Sequential:
    """Train-time only (Keras skips these layers at inference): pose, position, scale."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.04),
            keras.layers.RandomTranslation(0.08, 0.08),
            keras.layers.RandomZoom(0.1),
        ],
        name="augmentation",
    )


def build_model(
    size: str = "small", learning_rate: float = 1e-3, augment: bool = True, width: float = 1.0, dropout: float = 0.4
) -> keras.Model:
    """`width` scales every layer's filters and units (the Tuner's knob, with `dropout`, the dense
    layers' dropout rate, and the learning rate); 1.0 and 0.4 are the architecture above."""
    if size not in MODEL_SIZES:
        raise ValueError(f"model size {size!r} is not one of {sorted(MODEL_SIZES)}")
    filters, convs, dense_units, dense_layers = MODEL_SIZES[size]
    filters = tuple(max(4, round(f * width)) for f in filters)
    dense_units = max(8, round(dense_units * width))
    inputs = keras.Input(shape=(FACE_SIZE, FACE_SIZE, 1), name=INPUT_KEY)
    x = augmentation()(inputs) if augment else inputs
    for stage, width in enumerate(filters):
        for conv in range(convs):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{stage}_{conv}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.1 + 0.05 * stage)(x)
    x = keras.layers.Flatten()(x)
    for _ in range(dense_layers):
        x = keras.layers.Dense(dense_units, use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"emotion_vgg_{size}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["sparse_categorical_accuracy"],
    )
    return model


def learning_rate_schedule() -> keras.callbacks.Callback:
    """Halve the learning rate when the held-out loss has not improved for 3 epochs: part of the
    training recipe, so the benchmark's bare fit uses it too."""
    return keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5)


def training_callbacks(epochs: int, max_epochs: int, patience: int) -> tuple[list[keras.callbacks.Callback], int]:
    """The recipe's callbacks and the epochs to fit: -> (callbacks, epochs for `fit`).

    The learning-rate schedule always. With `max_epochs` above `epochs`: `epochs` are run, then the
    fit goes on while the held-out loss still improves, up to `max_epochs`; it stops `patience`
    epochs after its best one and keeps that one's weights. Why: a count that fits one data set
    under-fits a larger or harder one. The drift drill's retrain on 8,000 clean and dim faces still
    had its held-out loss falling at epoch 15 (0.49; the first model's 0.39) and reached 0.935 of
    the clean accuracy on the dim faces (goal 0.95). Not before `epochs`: a fit's held-out loss can
    rise in its first epochs while it learns (batch normalisation's statistics settle), and an
    early stop there kept epoch 1's weights (0.25 accuracy). Measured on the drill's faces (three
    splits, bench-free script): the retrain on 8,000 clean and dim faces reached 0.818-0.828 on dim
    faces going on to 23-33 epochs, against 0.797-0.808 stopped at 15."""
    callbacks = [learning_rate_schedule()]
    if max_epochs <= epochs or patience <= 0:
        return callbacks, epochs
    # Watched from epoch `epochs` on (start_from_epoch counts from 0): the planned fit's last epoch
    # is the first candidate, so going on keeps a later epoch only when its held-out loss is lower.
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True, start_from_epoch=epochs - 1
        )
    )
    return callbacks, max_epochs


def class_weights(label_counts: list[int]) -> dict[int, float]:
    """Inverse-frequency weights, normalised to mean 1 over present classes; capped so a class
    with a handful of faces (disgust) does not dominate the loss."""
    present = [c for c in label_counts if c > 0]
    total, k = sum(present), len(present)
    return {i: (min(total / (k * c), 10.0) if c > 0 else 0.0) for i, c in enumerate(label_counts)}


def in_canonical_order(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces sorted by their content, so that a fit with a given seed sees them in one order.

    Why: Transform's Beam workers write the transformed examples in a different order on every
    run, and the order is what a seeded shuffle starts from: the same faces gave 82.6 % and
    80.2 % held-out accuracy. The key is a fixed positive projection of the pixels, so any
    increasing affine map of them (raw pixels, the standardised faces) sorts the same way: the
    benchmark's bare fit sees its faces in the Trainer's order. Ties (duplicates) go by label;
    the key is rescaled to [0, 1] and rounded to 2^-32 because BLAS may give two identical faces
    keys that differ in their last bits.
    """
    flat = images.reshape(len(images), -1).astype(np.float64)
    key = flat @ np.random.default_rng(0).uniform(0.5, 1.5, flat.shape[1])
    span = float(key.max() - key.min()) if len(key) else 0.0
    key = np.round((key - (key.min() if len(key) else 0.0)) / (span or 1.0) * 2**32)
    order = np.lexsort((labels, key))
    return images[order], labels[order]
