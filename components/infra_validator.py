"""InfraValidator on the embedded backend: the candidate must load and answer in the server that
will serve it before it can be pushed.

TFX's own InfraValidator starts TF Serving in Docker (`local_docker`) or Kubernetes; neither runs
on the machines moodloop is developed on, so locally this component does the same job with the
gateway's embedded backend (serving/backends.py), which loads SavedModels and replays warm-up
records exactly as the gateway will. It speaks TFX's contract: an `InfraBlessing` artifact with
the `blessed` custom property and, as with `request_spec.make_warmup`, a stamped copy of the model
with `assets.extra/tf_serving_warmup_requests` that the Pusher pushes. With TF Serving available
(docker-compose, CI) the pipeline uses TFX's InfraValidator instead (`MOODLOOP_INFRA_VALIDATOR=tfserving`).
"""

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from moodloop.contracts import (
    FACE_SIZE,
    FEATURE_IMAGE,
    NUM_CLASSES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)

BLESSED_FILE, NOT_BLESSED_FILE = "INFRA_BLESSED", "INFRA_NOT_BLESSED"  # TFX InfraValidator's markers


def sample_examples(examples_uri: str, count: int) -> list[bytes]:
    """The first `count` serialized tf.Examples of the eval split (gzipped TFRecords)."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, "*")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [record.numpy() for record in dataset]


def _images(serialized: list[bytes]) -> list[bytes]:
    import tensorflow as tf

    return [tf.train.Example.FromString(e).features.feature[FEATURE_IMAGE].bytes_list.value[0] for e in serialized]


def write_warmup_requests(model_dir: str, model_name: str, serialized_examples: list[bytes]) -> str:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per signature of the model contract."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    requests = {
        SIGNATURE_IMAGES: {"images": tf.make_tensor_proto(_images(serialized_examples))},
        SIGNATURE_PIXELS: {"pixels": tf.make_tensor_proto(np.zeros((1, FACE_SIZE, FACE_SIZE), np.uint8))},
        SIGNATURE_EXAMPLES: {"examples": tf.make_tensor_proto(serialized_examples)},
    }
    path = path_utils.warmup_file_path(model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def check_in_embedded_server(model_dir: str, model_name: str, serialized_examples: list[bytes]) -> list[str]:
    """Load the model in the embedded backend (warm-up replayed), then ask each signature once.
    Returns the problems found; empty means servable."""
    import numpy as np

    from moodloop import models_config
    from serving.backends import EmbeddedBackend, ServingError
    from serving.batching import BatchingParameters

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moodloop-infra-") as tmp:
        base = Path(tmp) / model_name
        base.mkdir()
        (base / "1").symlink_to(os.path.abspath(model_dir), target_is_directory=True)
        config = Path(tmp) / "models.config"
        models_config.ensure(config, model_name, base)
        backend = EmbeddedBackend(config, BatchingParameters(batch_timeout_micros=0))
        try:
            started = time.perf_counter()
            backend.start()
            states = backend.status(model_name, None, None)
            print(f"loaded and warmed up in {time.perf_counter() - started:.1f} s: {states}", flush=True)
            if [s.state for s in states] != ["AVAILABLE"]:
                return [f"the model did not load: {states[0].error if states else 'no version found'}"]
            for signature, inputs in (
                (SIGNATURE_IMAGES, {"images": np.array(_images(serialized_examples), dtype=object)}),
                (SIGNATURE_PIXELS, {"pixels": np.zeros((2, FACE_SIZE, FACE_SIZE), np.uint8)}),
                (SIGNATURE_EXAMPLES, {"examples": np.array(serialized_examples, dtype=object)}),
            ):
                rows = len(next(iter(inputs.values())))
                try:
                    _, outputs = backend.predict(model_name, 1, None, signature, inputs)
                except ServingError as error:
                    problems.append(f"{signature}: {error.code}: {error.message}")
                    continue
                probabilities = outputs.get(OUTPUT_PROBABILITIES)
                if probabilities is None or probabilities.shape != (rows, NUM_CLASSES):
                    problems.append(f"{signature}: expected {OUTPUT_PROBABILITIES} of shape ({rows}, {NUM_CLASSES})")
                elif not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
                    problems.append(f"{signature}: probabilities do not sum to 1")
        except Exception as error:  # noqa: BLE001 - any failure to serve is the verdict, not a crash
            problems.append(f"{type(error).__name__}: {error}")
        finally:
            backend.close()
    return problems


@tfx.dsl.components.component
def EmbeddedInfraValidator(
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.InfraBlessing],
    model_name: tfx.dsl.components.Parameter[str] = "emotion",
    num_examples: tfx.dsl.components.Parameter[int] = 8,
) -> None:
    """Stamp the model with warm-up requests, load it in the embedded backend, ask every signature."""
    stamped = path_utils.stamped_model_path(blessing.uri)
    shutil.copytree(path_utils.serving_model_path(model.uri), stamped)
    serialized = sample_examples(artifact_utils.get_split_uri([examples], "eval"), num_examples)
    warmup = write_warmup_requests(stamped, model_name, serialized)
    print(f"warm-up requests ({len(serialized)} eval faces, 3 signatures) written to {warmup}", flush=True)
    problems = check_in_embedded_server(stamped, model_name, serialized)
    blessed = not problems
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("has_model", int(blessed))
    Path(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE).touch()
    if blessed:
        print("INFRA BLESSED: the model loads, replays its warm-up requests and answers every signature", flush=True)
    else:
        print("INFRA NOT BLESSED (nothing will be pushed):\n  " + "\n  ".join(problems), flush=True)
