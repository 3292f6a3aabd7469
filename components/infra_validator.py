"""InfraValidator on moodloop's model server: the candidate must load and answer in the server
that will serve it before it can be pushed.

TFX's own InfraValidator starts TF Serving in Docker (`local_docker`) or Kubernetes; neither runs
on the machines moodloop is developed on, so locally this component does the same job with the
gateway (`python -m serving.gateway`, embedded backend): it starts it as a process on the stamped
model, which loads it and replays its warm-up records exactly as the gateway will, and asks it
through TF Serving's gRPC API. It speaks TFX's contract: an `InfraBlessing` artifact with the
`blessed` custom property and, as with `request_spec.make_warmup`, a stamped copy of the model
with `assets.extra/tf_serving_warmup_requests` that the Pusher pushes. With TF Serving available
(docker-compose, CI) the pipeline uses TFX's InfraValidator instead (`MOODLOOP_INFRA_VALIDATOR=tfserving`).
"""

import glob
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from components.model_contract import example_images, write_warmup_requests
from moodloop.core import models_config
from moodloop.core.contracts import (
    FACE_SIZE,
    NUM_CLASSES,
    OUTPUT_HEATMAP,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)
from moodloop.core.gateway_process import start_process

log = logging.getLogger(__name__)

BLESSED_FILE, NOT_BLESSED_FILE = "INFRA_BLESSED", "INFRA_NOT_BLESSED"  # TFX InfraValidator's markers


def sample_examples(examples_uri: str, count: int) -> list[bytes]:
    """The first `count` serialized tf.Examples of the eval split (gzipped TFRecords)."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, "*")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [record.numpy() for record in dataset]


class ModelServerProcess:
    """moodloop's model server, started through its public entry point (`python -m serving.gateway`,
    what `moodloop serve` runs) on one model version, and asked through TF Serving's gRPC API: as
    TFX's InfraValidator does with TF Serving, nothing of the serving stage is imported.

    It runs in a home of its own, so its inference log and traffic file are thrown away with it."""

    def __init__(self, model_dir: str, model_name: str, workdir: Path) -> None:

        self.model_name = model_name
        base = workdir / "models" / model_name
        base.mkdir(parents=True)
        (base / "1").symlink_to(os.path.abspath(model_dir), target_is_directory=True)
        config = workdir / "models.config"
        models_config.ensure(config, model_name, base)
        home = workdir / "home"
        environment = {
            **os.environ,
            "MOODLOOP_HOME": str(home),
            "MOODLOOP_MODEL_NAME": model_name,
            "MOODLOOP_MODEL_BASE": str(base),
            "MOODLOOP_INFERENCE_LOG_URL": str(home / "inference_log"),
            "MOODLOOP_TRAFFIC_FILE": str(home / "traffic.json"),
            "MOODLOOP_SERVING_POLL_SECONDS": "0.5",
        }
        # ports 0: the server binds free ones and says which (no port picked here, bound there later)
        flags = ["--backend", "embedded", "--host", "127.0.0.1", "--grpc-port", "0", "--rest-port", "0"]
        self.gateway = start_process(environment, args=[*flags, "--model-config", str(config)])
        self.grpc_port = self.gateway.grpc_port
        self.process = self.gateway.process

    def log_tail(self, lines: int = 5) -> str:
        return self.gateway.log_tail(lines)

    def wait_until_loaded(self, timeout_s: float = 180.0) -> str | None:
        """None once version 1 is AVAILABLE (its warm-up requests replayed), else why not."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return f"the model server exited ({self.process.returncode}): {self.log_tail()}"
                try:
                    versions = stub.GetModelStatus(request, timeout=5).model_version_status
                except grpc.RpcError:
                    time.sleep(0.2)  # not listening yet
                    continue
                if any(v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for v in versions):
                    return None
                failed = [v for v in versions if v.status.error_code]
                if failed:
                    return f"the model did not load: {failed[0].status.error_message}"
                time.sleep(0.2)
        return f"the model did not load within {timeout_s:.0f} s: {self.log_tail()}"

    def predict(self, signature: str, inputs: dict) -> dict:
        """One Predict call on version 1; outputs as numpy arrays. Raises grpc.RpcError."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.version.value = 1
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def stop(self) -> None:
        self.gateway.stop()


def _gradient(rows: int) -> np.ndarray:
    """Faces that are not blank: a blank face has no gradient to explain."""
    ramp = np.linspace(0, 255, FACE_SIZE, dtype=np.float32)
    return np.broadcast_to(np.add.outer(ramp, ramp) / 2, (rows, FACE_SIZE, FACE_SIZE)).astype(np.uint8)


def _prediction_problem(outputs: dict[str, np.ndarray], rows: int) -> str | None:
    probabilities = outputs.get(OUTPUT_PROBABILITIES)
    if probabilities is None or probabilities.shape != (rows, NUM_CLASSES):
        return f"expected {OUTPUT_PROBABILITIES} of shape ({rows}, {NUM_CLASSES})"
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        return "probabilities do not sum to 1"
    return None


def _explanation_problem(outputs: dict[str, np.ndarray], rows: int) -> str | None:
    heatmap = outputs.get(OUTPUT_HEATMAP)
    if heatmap is None or heatmap.shape != (rows, FACE_SIZE, FACE_SIZE):
        return f"expected {OUTPUT_HEATMAP} of shape ({rows}, {FACE_SIZE}, {FACE_SIZE})"
    if not (np.isfinite(heatmap).all() and heatmap.min() >= 0 and heatmap.max() <= 1 + 1e-6):
        return f"{OUTPUT_HEATMAP} is not in 0..1"
    return None


def check_in_model_server(model_dir: str, model_name: str, serialized_examples: list[bytes]) -> list[str]:
    """Load the model in the model server (warm-up replayed), then ask each signature once.
    Returns the problems found; empty means servable."""
    import grpc

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moodloop-infra-") as tmp:
        started = time.perf_counter()
        try:
            server = ModelServerProcess(model_dir, model_name, Path(tmp))
        except RuntimeError as error:  # the server did not come up at all: the model is not servable here
            return [f"the model server did not start: {error}"]
        try:
            not_loaded = server.wait_until_loaded()
            if not_loaded:
                return [not_loaded]
            log.info(f"model server up, model loaded and warmed up in {time.perf_counter() - started:.1f} s")
            for signature, inputs in (
                (SIGNATURE_IMAGES, {"images": np.array(example_images(serialized_examples), dtype=object)}),
                (SIGNATURE_PIXELS, {"pixels": np.zeros((2, FACE_SIZE, FACE_SIZE), np.uint8)}),
                (SIGNATURE_EXAMPLES, {"examples": np.array(serialized_examples, dtype=object)}),
                (SIGNATURE_EXPLAIN, {"pixels": _gradient(2)}),
            ):
                try:
                    outputs = server.predict(signature, inputs)
                except grpc.RpcError as error:
                    problems.append(f"{signature}: {error.code().name}: {error.details()}")
                    continue
                rows = len(next(iter(inputs.values())))
                check = _explanation_problem if signature == SIGNATURE_EXPLAIN else _prediction_problem
                problem = check(outputs, rows)
                if problem:
                    problems.append(f"{signature}: {problem}")
        finally:
            server.stop()
    return problems


@component
def EmbeddedInfraValidator(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.InfraBlessing],
    model_name: Parameter[str] = "emotion",
    num_examples: Parameter[int] = 8,
) -> None:
    """Stamp the model with warm-up requests, load it in the model server, ask every signature."""
    stamped = path_utils.stamped_model_path(blessing.uri)
    shutil.copytree(path_utils.serving_model_path(model.uri), stamped)
    serialized = sample_examples(artifact_utils.get_split_uri([examples], "eval"), num_examples)
    warmup = write_warmup_requests(stamped, model_name, serialized)
    log.info(f"warm-up requests ({len(serialized)} eval faces, 4 signatures) written to {warmup}")
    problems = check_in_model_server(stamped, model_name, serialized)
    blessed = not problems
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("has_model", int(blessed))
    Path(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE).touch()
    if blessed:
        log.info("INFRA BLESSED: the model loads, replays its warm-up requests and answers every signature")
    else:
        log.warning("INFRA NOT BLESSED (nothing will be pushed):\n  " + "\n  ".join(problems))
