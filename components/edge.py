"""Edge models: each pushed version as TensorFlow Lite files a device runs on 48x48 grey pixels.

Two parts, as the rest of the pipeline:
- the Trainer writes an edge source beside the serving model (`export_edge_source`): the same
  network with the Transform graph's standardisation folded in as one multiply-add (it is an
  affine map of the pixels, checked when folded) and the calibrated softmax, so a device needs
  no TensorFlow Transform, no PNG codec and no map_fn, only TFLite's builtin ops;
- the EdgeExporter component, after the Pusher, converts it to float16 (weights in half
  precision) and to full-integer int8 (weights and activations, calibrated on a representative
  sample of training faces), checks each against the pushed SavedModel on the held-out faces
  (the parity gate: top-1 agreement overall and for every emotion), measures size and per-face
  latency with the LiteRT interpreter (`ai-edge-litert`), and publishes the files that pass into
  the version's `assets.extra/edge/` with `edge.json` (files, sha256, labels, the exact input,
  parity, latency). A file that fails parity is not published; the SavedModel push stands.

Input a device feeds (documented in edge.json):
- float16.tflite: float32 [1, 48, 48, 1], grey levels 0..255 (no scaling: it is inside);
- int8.tflite: uint8 [1, 48, 48, 1], grey levels 0..255 quantized with the input's scale and
  zero point (in edge.json; about 1 and 0: raw grey bytes); output uint8 probabilities, dequantize
  with the output's scale and zero point.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import List  # noqa: UP035 - TFX's component decorator reads typing.List, not list

import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts

from components.ab_gate import split_examples
from moodloop.core.contracts import (
    EDGE_DIR,
    EDGE_METADATA,
    EMOTIONS,
    FACE_SIZE,
    FEATURE_IMAGE,
    OUTPUT_PROBABILITIES,
    SIGNATURE_PIXELS,
)
from moodloop.core.edge_runtime import EdgeModel
from moodloop.core.files import publish_dir

log = logging.getLogger(__name__)

EDGE_SOURCE_DIR = "Format-Edge"  # beside the Trainer's Format-Serving, inside its Model artifact
KINDS = ("float16", "int8")
PARITY_GOALS = {"float16": 0.99, "int8": 0.97}  # top-1 agreement with the SavedModel, overall and per emotion
PARITY_ALPHA = 0.05  # per emotion: a shortfall this unlikely under the goal is real
NEAR_TIE = 0.02  # a disagreement where the SavedModel's top two probabilities are this close is a near tie
INPUT_NAME = "pixels"


# ---------------------------------------------------------------- the Trainer's edge source


def affine_preprocessing(tft_layer) -> tuple[float, float]:
    """(scale, offset) such that the Transform graph maps a grey level g to g * scale + offset.

    Read from the graph itself at grey levels 0 and 255, and checked at 37 and 200: a Transform
    that is not affine in the pixels cannot be folded into an edge model, and says so."""
    import tensorflow as tf

    from components.model import INPUT_KEY

    def transformed(level: int) -> float:
        face = tf.io.encode_png(tf.fill([FACE_SIZE, FACE_SIZE, 1], tf.constant(level, tf.uint8)))
        values = tft_layer({FEATURE_IMAGE: tf.reshape(face, [1, 1])})[INPUT_KEY].numpy()
        if not np.allclose(values, values.flat[0], atol=1e-6):
            raise ValueError("the Transform graph treats pixels by position: an edge model cannot fold it in")
        return float(values.flat[0])

    offset = transformed(0)
    scale = (transformed(255) - offset) / 255.0
    for level in (37, 200):
        if abs(transformed(level) - (level * scale + offset)) > 1e-4 * max(1.0, abs(scale) * 255):
            raise ValueError("the Transform graph is not an affine map of the pixels: an edge model cannot fold it in")
    return scale, offset


def export_edge_source(model, tf_transform_output, export_dir: str, temperature: float = 1.0) -> tuple[float, float]:
    """A SavedModel whose serving_default maps pixels (float32 [N, 48, 48, 1], 0..255) to the
    calibrated probabilities [N, 7], with only builtin-convertible ops. Returns the folded (scale, offset)."""
    import tensorflow as tf

    from components.trainer import OUTPUT_LAYER, embedder

    scale, offset = affine_preprocessing(tf_transform_output.transform_features_layer())
    features = embedder(model)
    output = model.get_layer(OUTPUT_LAYER)

    class EdgeSource(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = list(model.weights)

        @tf.function(input_signature=[tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 1], tf.float32, name=INPUT_NAME)])
        def serve(self, pixels):
            hidden = features(pixels * scale + offset, training=False)
            logits = tf.matmul(hidden, output.kernel) + output.bias
            return {OUTPUT_PROBABILITIES: tf.nn.softmax(logits / temperature)}

    module = EdgeSource()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve.get_concrete_function()})
    return scale, offset


def export_adopted_edge_source(module, export_dir: str) -> None:
    """The edge source of a team's network (components/adopt.py AdoptedModule, e.g. fine-tuned by
    components/fine_tune.py): pixels float32 [N, 48, 48, 1], 0..255 -> the calibrated probabilities
    in the contract's class order, through the network's own preprocessing (its input size, colour
    and scaling). Its resize enlarges without antialiasing: the same values for an enlargement, and
    TFLite's builtin RESIZE_BILINEAR instead of ScaleAndTranslate, which has no builtin."""
    import tensorflow as tf

    prep = module.preprocessing

    class EdgeSource(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = module  # tracked: the network's variables are saved with it

        @tf.function(input_signature=[tf.TensorSpec([None, FACE_SIZE, FACE_SIZE, 1], tf.float32, name=INPUT_NAME)])
        def serve(self, pixels):
            images = tf.image.grayscale_to_rgb(pixels) if prep.channels == 3 else pixels
            if (prep.height, prep.width) != (FACE_SIZE, FACE_SIZE):
                images = tf.image.resize(images, [prep.height, prep.width], antialias=False)
            _, probabilities = module.classify(module.scale(images))
            return {OUTPUT_PROBABILITIES: probabilities}

    source = EdgeSource()
    tf.saved_model.save(source, export_dir, signatures={"serving_default": source.serve.get_concrete_function()})


# ---------------------------------------------------------------- conversion, parity, latency


def convert(source_dir: str, kind: str, representative: np.ndarray | None = None) -> bytes:
    """The edge source as a TFLite flatbuffer: `float16` (weights in half precision) or `int8`
    (full integer, calibrated on `representative` faces [N, 48, 48] uint8)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(source_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 needs representative faces to calibrate its activations")
        faces = representative.astype(np.float32)[..., np.newaxis]

        def samples():
            for face in faces:
                yield [face[np.newaxis]]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    else:
        raise ValueError(f"edge kind {kind!r} is not one of {KINDS}")
    return converter.convert()


def agreement(reference: np.ndarray, edge: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 agreement of the edge file with the SavedModel: overall and on the faces of each emotion."""
    same = reference.argmax(axis=1) == edge.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:]
    near_ties = int((~same & (top_two[:, 1] - top_two[:, 0] < NEAR_TIE)).sum())
    per_class = {
        EMOTIONS[k]: {"faces": int((labels == k).sum()), "agreement": float(same[labels == k].mean())}
        for k in range(len(EMOTIONS))
        if (labels == k).any()
    }
    return {
        "faces": int(len(same)),
        "agreement": float(same.mean()),
        "per_class": per_class,
        "disagreements": int((~same).sum()),
        "near_ties": near_ties,  # of those, faces the SavedModel itself barely decides
    }


def below_goal_p_value(agreeing: int, faces: int, goal: float) -> float:
    """One-sided exact binomial test: the chance of `agreeing` or fewer agreements in `faces` if the
    file truly agreed at `goal`. Small: the shortfall is real, not the luck of a few faces."""
    from scipy.stats import binom

    return float(binom.cdf(agreeing, faces, goal))


def parity_problems(kind: str, parity: dict) -> list[str]:
    """Overall: the agreement must reach the goal. Per emotion: it must not fall short beyond
    chance (p < PARITY_ALPHA). Why the test per emotion: a class with 32 held-out faces can only
    show 100 % or at most 96.9 %, so one near tie would fail a 99 % point rule (measured: the float16
    file of a 10k-face run agreed on 1999 of 2000 faces, the one miss a disgust face the SavedModel
    itself scored within 0.02 between its top two). 31 of 32 at a 99 % goal: p = 0.27, kept;
    176 of 188 at 97 %: p = 0.01, refused."""
    goal = PARITY_GOALS[kind]
    problems = []
    if parity["agreement"] < goal:
        problems.append(
            f"agrees with the SavedModel on {parity['agreement']:.2%} of {parity['faces']} faces (goal {goal:.0%})"
        )
    for emotion, value in parity["per_class"].items():
        agreeing = round(value["agreement"] * value["faces"])
        p_value = below_goal_p_value(agreeing, value["faces"], goal)
        value["p_below_goal"] = p_value
        if value["agreement"] < goal and p_value < PARITY_ALPHA:
            problems.append(
                f"{emotion}: agrees on {value['agreement']:.2%} of {value['faces']} faces, below the {goal:.0%} "
                f"goal beyond chance (exact binomial p = {p_value:.3g} < {PARITY_ALPHA})"
            )
    return problems


# ---------------------------------------------------------------- faces from the curated spans


def decoded_faces(serialized: list[bytes]) -> np.ndarray:
    """Serialized curated tf.Examples -> faces [N, 48, 48] uint8, as the gateway's crops are."""
    import tensorflow as tf

    from components.preprocessing import decode_images

    if not serialized:
        return np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    encoded = tf.constant(
        [tf.train.Example.FromString(s).features.feature[FEATURE_IMAGE].bytes_list.value[0] for s in serialized]
    )
    return tf.cast(tf.round(tf.clip_by_value(decode_images(encoded), 0, 255)), tf.uint8).numpy()[..., 0]


def split_faces(examples: list, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` faces of a split, from every span, evenly spread; and their labels."""
    serialized, labels = split_examples(examples, split)
    chosen = (
        np.linspace(0, len(serialized) - 1, limit).astype(int)
        if len(serialized) > limit
        else np.arange(len(serialized))
    )
    return decoded_faces([serialized[i] for i in chosen]), labels[chosen]


# ---------------------------------------------------------------- the component


class EdgeModels(artifact.Artifact):
    """The edge files of one run, whether published or not, and their report (edge.json)."""

    TYPE_NAME = "MoodloopEdgeModels"


@dataclasses.dataclass
class EdgeResult:
    kind: str
    size_bytes: int
    latency_ms: float
    parity: dict
    problems: list[str]

    @property
    def published(self) -> bool:
        return not self.problems


def describe(results: list[EdgeResult]) -> list[str]:
    lines = []
    for r in results:
        per_class = ", ".join(f"{e} {v['agreement']:.1%}" for e, v in r.parity["per_class"].items())
        verdict = "published" if r.published else "NOT published: " + "; ".join(r.problems)
        lines.append(
            f"edge {r.kind}: {r.size_bytes / 1024:.0f} KiB, {r.latency_ms:.2f} ms per face (LiteRT, 1 thread), "
            f"top-1 agreement {r.parity['agreement']:.2%} on {r.parity['faces']} held-out faces "
            f"({per_class}; {r.parity['near_ties']} of the {r.parity['disagreements']} disagreements are near "
            f"ties of the SavedModel, top two within {NEAR_TIE}): {verdict}"
        )
    return lines


def build_edge_files(
    source_dir: str, reference_dir: str, representative: np.ndarray, held_out: np.ndarray, labels: np.ndarray, out: Path
) -> tuple[list[EdgeResult], dict]:
    """Convert, check and measure each kind into `out`; returns the results and edge.json's content
    (listing only the files that passed)."""
    import tensorflow as tf

    signature = tf.saved_model.load(reference_dir).signatures[SIGNATURE_PIXELS]
    reference = np.concatenate(
        [
            signature(pixels=tf.constant(held_out[i : i + 256]))[OUTPUT_PROBABILITIES].numpy()
            for i in range(0, len(held_out), 256)
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    results, files, failed = [], {}, {}
    for kind in KINDS:
        try:
            flatbuffer = convert(source_dir, kind, representative)
            edge = EdgeModel(flatbuffer)
            parity = agreement(reference, edge.probabilities(held_out), labels)
            latency = edge.latency_ms(held_out)
        except Exception as error:  # noqa: BLE001 - a file that cannot be made is not published; the push stands
            failed[kind] = [f"could not be converted or run: {type(error).__name__}: {error}"]
            log.error(f"edge {kind}: {failed[kind][0]}")
            continue
        result = EdgeResult(kind, len(flatbuffer), latency, parity, parity_problems(kind, parity))
        results.append(result)
        name = f"{kind}.tflite"
        (out / name).write_bytes(flatbuffer)
        if result.published:
            files[name] = {
                "kind": kind,
                "bytes": len(flatbuffer),
                "sha256": hashlib.sha256(flatbuffer).hexdigest(),
                **edge.spec(),
                "latency_ms_per_face": round(result.latency_ms, 3),
                "parity": parity,
            }
    metadata = {
        "labels": list(EMOTIONS),
        "input": "one face: 48x48 grey levels 0..255, cropped and aligned as the gateway crops faces "
        "(the box's square, eyes level), shape [1, 48, 48, 1]; float16.tflite takes float32 values "
        "0..255, int8.tflite takes uint8 quantized with the input scale and zero point below",
        "output": "probabilities of the 7 emotions in `labels` order (calibrated softmax); int8.tflite "
        "gives uint8: dequantize with the output scale and zero point",
        "files": files,
        "not_published": {r.kind: r.problems for r in results if not r.published} | failed,
        "parity_goals": PARITY_GOALS,
    }
    (out / EDGE_METADATA).write_text(json.dumps(metadata, indent=1))
    return results, metadata


def publish(out: Path, metadata: dict, version_dir: str) -> str:
    """Put the passing files and edge.json into `<version>/assets.extra/edge/`: staged beside it,
    then renamed in (a folder published before is renamed away first, then removed)."""
    target = Path(version_dir) / EDGE_DIR
    with publish_dir(target, replace=True) as staging:
        for name in metadata["files"]:
            shutil.copy(out / name, staging / name)
        shutil.copy(out / EDGE_METADATA, staging / EDGE_METADATA)
    return str(target)


@component
def EdgeExporter(
    model: InputArtifact[standard_artifacts.Model],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    examples: InputArtifact[List[standard_artifacts.Examples]],  # noqa: UP006
    edge: OutputArtifact[EdgeModels],
    representative_faces: Parameter[int] = 500,
    held_out_faces: Parameter[int] = 2000,
) -> None:
    """TFLite float16 and int8 of the pushed model, checked against it, published beside it."""
    if not pushed_model.get_int_custom_property("pushed"):
        log.info("edge export: nothing was pushed in this run")
        return
    version_dir = pushed_model.get_string_custom_property("pushed_destination")
    source = os.path.join(model.uri, EDGE_SOURCE_DIR)
    if not os.path.exists(os.path.join(source, "saved_model.pb")):
        log.warning(f"edge export: the Trainer wrote no edge source ({source}); no edge files for this version")
        return
    representative, _ = split_faces(examples, "train", representative_faces)
    held_out, labels = split_faces(examples, "eval", held_out_faces)
    if not len(held_out) or not len(representative):
        log.warning("edge export: no held-out or training faces to check the files on; nothing published")
        return
    results, metadata = build_edge_files(source, version_dir, representative, held_out, labels, Path(edge.uri))
    for line in describe(results):
        log.info(line)
    where = publish(Path(edge.uri), metadata, version_dir)
    log.info(f"edge files: {', '.join(metadata['files']) or 'none'} published in {where}")
