"""The gateway's data plane, shared by the REST and gRPC surfaces and free of either transport
(as KServe's `protocol/dataplane.py`): routing (traffic split), the backend call, metrics and the
inference log. The transports (rest.py, grpc_api.py) only translate to and from it."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from moodloop.core import encoded_images
from moodloop.core.contracts import (
    EMOTIONS,
    OUTPUT_EMBEDDING,
    OUTPUT_HEATMAP,
    OUTPUT_IMAGE_PROPERTIES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
    emotion_index,
)
from moodloop.core.log_records import Feedback, Prediction
from moodloop.core.rollout import Rollout, TrafficFile, choose_label
from moodloop.core.settings import Settings
from serving import examples as tf_examples
from serving.backends import Backend, ServingError, VersionState
from serving.batching import Tensors
from serving.corrections import Corrections, RecentFaces
from serving.faces import FaceDetector, check_face_detector, make_face_detector
from serving.inference_log import InferenceLog
from serving.labelling import LabellingDesk, LabelRefused
from serving.metrics import GatewayMetrics

log = logging.getLogger("moodloop.serving")


@dataclass(frozen=True)
class Call:
    """Who asks for what: the transport fills it in."""

    api: str  # rest | grpc | faces | videos
    model: str
    version: int | None = None
    label: str | None = None
    signature: str = ""
    client_id: str | None = None
    request_id: str = ""

    @property
    def typed(self) -> bool:
        """Whether the inputs came with their own dtypes (gRPC's TensorProto; see check_inputs)."""
        return self.api == "grpc"


class FaceClassifier:
    """Photo and video analysis's model: `classifier(crops, context)` -> probabilities [N, 7] (logged),
    `explain(crops)` -> heatmaps [N, 48, 48] (the model's `serving_explain`; not logged: it
    repeats a prediction). One route for the whole photo or video (every frame on the same side
    of the split; the explanation from the version that classified), and instances numbered
    across frames, so feedback names exactly one face."""

    def __init__(self, dataplane: DataPlane, call: Call, keep_faces: bool = True) -> None:
        self._dataplane = dataplane
        self.keep_faces = keep_faces  # for corrections; not for video frames or live webcam frames
        version, label = dataplane.route(call)
        self._call = Call(call.api, call.model, version, label, SIGNATURE_PIXELS, call.client_id, call.request_id)
        self._served_version: int | None = None
        self._faces_so_far = 0

    def __call__(self, crops: np.ndarray, context: list[dict]) -> np.ndarray:
        served, outputs = self._dataplane.predict(self._call, {"pixels": crops}, context, self._faces_so_far)
        if self.keep_faces:
            self._dataplane.recent_faces.add(self._call.request_id, self._faces_so_far, crops)
        self._served_version = served
        self._faces_so_far += len(crops)
        return outputs[OUTPUT_PROBABILITIES]

    def answered_by(self) -> dict:
        """Which model read the faces: name, version (None when no face was classified) and the
        label the request was routed to (stable, canary; None when pinned or unlabelled), as TF
        Serving names the version in its answers' model_spec."""
        return {"name": self._call.model, "version": self._served_version, "label": self._call.label}

    def explain(self, crops: np.ndarray) -> np.ndarray | None:
        """None when the version cannot explain (exported before serving_explain existed, or gone
        since it classified): the faces are still answered, without heatmaps."""
        call = self._call
        if self._served_version is not None:
            call = dataclasses.replace(call, version=self._served_version, label=None)
        try:
            _, outputs = self._dataplane.predict(
                dataclasses.replace(call, signature=SIGNATURE_EXPLAIN), {"pixels": crops}
            )
        except ServingError as error:
            log.warning(f"no explanation from version {call.version}: {error.message}")
            return None
        return outputs.get(OUTPUT_HEATMAP)


class DataPlane:
    def __init__(
        self, settings: Settings, backend: Backend, inference_log: InferenceLog, metrics: GatewayMetrics
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.inference_log = inference_log
        self.metrics = metrics
        self.traffic = TrafficFile(settings.traffic_file, settings.canary.share)
        self._local = threading.local()
        self.face_detector = check_face_detector(settings.serving.face_detector)  # a bad value fails at start
        self.recent_faces = RecentFaces(settings.serving.recent_faces)
        self.corrections = Corrections(settings)
        self.labelling = LabellingDesk(settings)

    @property
    def detector(self) -> FaceDetector:
        """One per thread, built on first use: OpenCV's cascade classifier is not safe to share between
        threads, and MTCNN does not say its stages are. Read it on the thread that detects."""
        if not hasattr(self._local, "detector"):
            self._local.detector = make_face_detector(self.face_detector)
        return self._local.detector

    @staticmethod
    def new_request_id() -> str:
        return uuid.uuid4().hex

    def route(self, call: Call) -> tuple[int | None, str | None]:
        """A request pinned to a version or label goes there; the others are split stable/canary."""
        if call.version is not None or call.label is not None:
            return call.version, call.label
        share = self.traffic.share()
        self.metrics.canary_share.set(share)
        return None, choose_label(call.client_id, self.backend.labels(call.model), share)

    def checked_inputs(self, inputs: Tensors) -> Tensors:
        """Bad input never reaches a decoder: at most MOODLOOP_MAX_INSTANCES instances, and each
        encoded image's header checked (format, declared pixels) first; what the model's decoder
        cannot read as the readers do is handed over as a grey PNG (moodloop/core/encoded_images.py)."""
        limit = self.settings.serving.max_instances
        for name, value in inputs.items():
            if value.ndim and len(value) > limit:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"input '{name}' has {len(value)} instances; the limit is {limit} per request "
                    "(MOODLOOP_MAX_INSTANCES): split the request",
                )
        images = inputs.get("images")
        if images is None or images.dtype != object:
            return inputs
        ready = np.empty(images.size, dtype=object)
        for i, data in enumerate(images.reshape(-1)):
            if not isinstance(data, bytes):
                raise ServingError("INVALID_ARGUMENT", f'instance {i}: an encoded image is bytes ({{"b64": ...}})')
            try:
                ready[i] = encoded_images.model_ready(data, self.settings.max_image_pixels)
            except encoded_images.ImageRefused as refused:
                raise ServingError("INVALID_ARGUMENT", f"instance {i}: {refused}") from None
        return {**inputs, "images": ready.reshape(images.shape)}

    @staticmethod
    def _name_the_bad_image(inputs: Tensors, error: ServingError) -> ServingError:
        """The model's decoder refused a batch whose headers were fine (truncated data): find and
        name the instance, instead of TensorFlow's graph error."""
        for i, data in enumerate(inputs["images"].reshape(-1)):
            try:
                encoded_images.decode_grey(data)  # the size was checked on the way in
            except encoded_images.ImageRefused as refused:
                return ServingError("INVALID_ARGUMENT", f"instance {i}: {refused}")
        return error

    def _with_declared_shapes(
        self, call: Call, version: int | None, label: str | None, inputs: Tensors, error: ServingError
    ) -> ServingError:
        """The model refused the inputs (its own words name a node deep in its graph): when their
        shapes are not the ones its signature declares, say so too. Shapes are the model's to check,
        as in TF Serving; the person reading the error should not have to find the node."""
        try:
            signature = self.backend.signature_defs(call.model, version, label)[1][call.signature or "serving_default"]
        except (ServingError, KeyError):
            return error
        mismatched = []
        for name, value in inputs.items():
            shape = signature.inputs[name].tensor_shape if name in signature.inputs else None
            if shape is None or shape.unknown_rank:
                continue
            dims = [d.size for d in shape.dim]
            if len(dims) != np.ndim(value) or any(
                d >= 0 and d != n for d, n in zip(dims, np.shape(value), strict=False)
            ):
                declared = "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"
                mismatched.append(
                    f"input '{name}' has shape {list(np.shape(value))}; the signature declares {declared}"
                )
        if not mismatched:
            return error
        return ServingError(error.code, f"{error.message} ({'; '.join(mismatched)})")

    def predict(
        self, call: Call, inputs: Tensors, context: list[dict] | None = None, first_instance: int = 0
    ) -> tuple[int, Tensors]:
        """Check, route, predict, count, log. `context` adds per-row log fields (face sizes)."""
        version, label = self.route(call)
        started = time.perf_counter()
        try:
            inputs = self.checked_inputs(inputs)
            try:
                served_version, outputs = self.backend.predict(
                    call.model, version, label, call.signature, inputs, call.typed
                )
            except ServingError as error:
                if error.code != "INVALID_ARGUMENT":
                    raise
                if "images" in inputs:
                    raise self._name_the_bad_image(inputs, error) from None
                raise self._with_declared_shapes(call, version, label, inputs, error) from None
        except ServingError as error:
            self.metrics.errors.labels(call.api, error.code).inc()
            self.metrics.requests.labels(call.api, call.model, str(version or ""), label or "", error.code).inc()
            raise
        elapsed = time.perf_counter() - started
        labels = (call.api, call.model, str(served_version), label or "")
        self.metrics.requests.labels(*labels, "OK").inc()
        self.metrics.latency.labels(*labels).observe(elapsed)
        self._log(call, served_version, label or "", inputs, outputs, elapsed, context, first_instance)
        return served_version, outputs

    def run_examples(self, call: Call, method: str, examples: np.ndarray) -> tuple[int, Any]:
        """Classify or Regress (`method`: examples.CLASSIFY | REGRESS) serialized tf.Examples with
        the call's signature, as TF Serving does -> (version, ClassificationResult | RegressionResult)."""
        version, label = self.route(call)
        served, signature_defs = self.backend.signature_defs(call.model, version, label)
        name = call.signature or "serving_default"
        if name not in signature_defs:
            raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {name}")
        tf_examples.check_signature(method, name, signature_defs[name])
        pinned = dataclasses.replace(call, version=served, label=None, signature=name)
        served, outputs = self.predict(pinned, {tf_examples.INPUTS: examples})
        if method == tf_examples.CLASSIFY:
            return served, tf_examples.classification_result(outputs, len(examples))
        return served, tf_examples.regression_result(outputs, len(examples))

    def multi_inference(self, calls: list[tuple[Call, str]], examples: np.ndarray) -> list[tuple[int, Any]]:
        """Several Classify/Regress tasks on one model and one set of examples (TF Serving's
        MultiInference): one version answers them all."""
        if not calls:
            raise ServingError("INVALID_ARGUMENT", "MultiInferenceRequest has no tasks")
        names = {call.model for call, _ in calls}
        if "" in names:
            raise ServingError("INVALID_ARGUMENT", "Found ModelSpec with an empty model name.")
        if len(names) > 1:
            raise ServingError(
                "INVALID_ARGUMENT", "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        seen: set[str] = set()  # a set: a request may list many tasks, checked in one pass
        for call, _ in calls:
            name = call.signature or "serving_default"
            if name in seen:
                raise ServingError("INVALID_ARGUMENT", f"Duplicate evaluation of signature: {name}")
            seen.add(name)
        for _, method in calls:
            if method not in (tf_examples.CLASSIFY, tf_examples.REGRESS):
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {method}")
        first = calls[0][0]
        version, label = self.route(first)
        served, _ = self.backend.signature_defs(first.model, version, label)
        return [
            self.run_examples(dataclasses.replace(call, version=served, label=None), method, examples)
            for call, method in calls
        ]

    def _log(self, call, version, label, inputs, outputs, elapsed, context, first_instance) -> None:
        probabilities = outputs.get(OUTPUT_PROBABILITIES)
        if probabilities is None or probabilities.ndim != 2:
            return  # not a classification signature: nothing of the inference-log contract to log
        signature = call.signature or SIGNATURE_IMAGES
        pixels = inputs.get("pixels") if signature == SIGNATURE_PIXELS else None
        encoded = inputs.get("images") if signature == SIGNATURE_IMAGES else None
        latency_ms = elapsed * 1000 / max(1, len(probabilities))
        embeddings = outputs.get(OUTPUT_EMBEDDING)
        # Computed by the model (versions exported since the outputs exist): nothing to decode here.
        in_graph = {column: outputs[name] for name, column in OUTPUT_IMAGE_PROPERTIES.items() if name in outputs}
        if len(in_graph) == len(OUTPUT_IMAGE_PROPERTIES):
            if not self.inference_log.faces_per_hour:  # kept only for the live-face sample
                pixels = encoded = None
        else:
            in_graph = {}
        for i, probs in enumerate(probabilities):
            extra = context[i] if context else {}
            self.inference_log.log(
                Prediction(
                    request_id=call.request_id,
                    instance=first_instance + i,
                    client_id=call.client_id or "",
                    model_name=call.model,
                    model_version=version,
                    model_label=label,
                    signature=signature,
                    api=call.api,
                    latency_ms=latency_ms,
                    probabilities=probs,
                    pixels=pixels[i] if pixels is not None else None,
                    encoded=bytes(encoded[i]) if encoded is not None else None,
                    face_width=extra.get("face_width"),
                    face_area_ratio=extra.get("face_area_ratio"),
                    embedding=embeddings[i] if embeddings is not None else None,
                    properties={column: values[i].item() for column, values in in_graph.items()} if in_graph else None,
                )
            )

    def refresh_log_metrics(self) -> None:
        self.metrics.log_dropped.set(self.inference_log.dropped)
        self.metrics.log_buffered.set(self.inference_log.buffered())
        self.metrics.log_written.set(self.inference_log.written)
        self.metrics.log_write_errors.set(self.inference_log.write_errors)

    def classifier(self, call: Call, keep_faces: bool = True) -> FaceClassifier:
        """A face classifier for photo/video analysis: crops [N,48,48] -> probabilities [N,7]."""
        return FaceClassifier(self, call, keep_faces)

    def feedback(
        self, request_id: str, label: str | int, instance: int = 0, sender: str = "unknown"
    ) -> tuple[Feedback, dict]:
        """Log the true label of a prediction (the canary analysis and the drift job read it); when
        the face was analysed here (photo, video, webcam), keep it and its sender for the next
        landing batch of corrections. Returns the record and what became of the face."""
        if not request_id or not isinstance(request_id, str):
            raise ServingError("INVALID_ARGUMENT", "'request_id' is required (the x-request-id of the prediction)")
        try:
            name = EMOTIONS[emotion_index(label)]
        except ValueError as error:
            raise ServingError("INVALID_ARGUMENT", str(error)) from None
        if not 0 <= int(instance) < 2**31:
            raise ServingError("INVALID_ARGUMENT", "'instance' is the row of the request: 0 or more")
        record = Feedback(request_id=request_id, instance=int(instance), label=name)
        if not self.inference_log.log(record):
            raise ServingError("RESOURCE_EXHAUSTED", "the log buffer is full; retry the feedback later")
        crop = self.recent_faces.get(request_id, int(instance))
        face: dict = {"kept": crop is not None}
        if crop is None:
            face["why"] = "only faces of recent photo analyses are kept (not video or live frames)"
        else:
            try:
                face["batch_complete"] = self.corrections.add(crop, name, request_id, int(instance), sender)
            except OSError as error:  # the label is logged; only the copy for training failed
                log.error(f"could not keep the corrected face {request_id}/{instance}: {error}")
                face = {"kept": False, "why": "the face could not be stored for training; the label is logged"}
        return record, face | {"corrections": self.corrections.counts()}

    def label_next(self) -> dict:
        return self.labelling.next_face()

    def label_answer(self, face_id: str, answer: str, sender: str = "unknown") -> dict:
        """One answer from the Label tab; an emotion is also the prediction's feedback label."""
        if not isinstance(face_id, str) or not face_id or not isinstance(answer, str):
            raise ServingError("INVALID_ARGUMENT", "'face_id' and 'answer' are required strings")
        try:
            face, complete = self.labelling.answer(face_id, answer, sender)
        except LabelRefused as refused:
            raise ServingError("INVALID_ARGUMENT", str(refused)) from None
        except OSError as error:
            log.error(f"could not keep the answer for {face_id}: {error}")
            raise ServingError("UNAVAILABLE", "the answer could not be stored; send it again") from None
        if answer in EMOTIONS:
            label = Feedback(request_id=face["request_id"], instance=int(face["instance"]), label=answer)
            self.inference_log.log(label)
        return {"face_id": face_id, "answer": answer, "batch_complete": complete, **self.labelling.summary()}

    def label_deliver(self) -> dict:
        where = self.labelling.deliver_now()
        return {"delivered": where, **self.labelling.summary()}

    # admin (token-protected by the transports)
    def promote(self, model: str) -> int:
        return self._rollout(model).promote()

    def rollback(self, model: str) -> int | None:
        return self._rollout(model).rollback()

    def _rollout(self, model: str) -> Rollout:
        return dataclasses.replace(Rollout.from_settings(self.settings), model_name=model)

    def reload(self) -> None:
        self.backend.sync()

    # the model server's own questions: the transports ask them here, never the backend itself
    def model_status(self, name: str, version: int | None, label: str | None) -> list[VersionState]:
        return self.backend.status(name, version, label)

    def signature_defs(self, name: str, version: int | None, label: str | None) -> tuple[int, dict]:
        return self.backend.signature_defs(name, version, label)

    def labels(self, model: str) -> dict[str, int]:
        return self.backend.labels(model)

    def replicas(self) -> list[dict]:
        """The TF Serving replicas behind the gateway and their health and calls ([] when it serves
        with its embedded backend)."""
        states = getattr(self.backend, "replica_states", None)
        return states() if states is not None else []

    def traffic_share(self) -> float:
        """The canary's share of the traffic now (traffic.json)."""
        return self.traffic.share()

    def set_traffic_share(self, share: float) -> float:
        self.traffic.set(share)
        return self.traffic.share()

    def close(self) -> None:
        self.backend.close()
