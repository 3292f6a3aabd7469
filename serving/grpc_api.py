"""The gRPC surface: TF Serving's PredictionService (Predict, Classify, Regress, MultiInference,
GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest), with the protos of
tensorflow-serving-api, so TF Serving's own clients work and get TF Serving's answers.

Clients may send `x-client-id` metadata (sticky traffic split); replies carry `x-request-id`.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from moodloop.core import models_config
from serving import examples as tf_examples
from serving.admission import bearer_matches
from serving.backends import ServingError
from serving.dataplane import Call, DataPlane

MAX_MESSAGE = 64 << 20


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    return model_spec.name, version, label


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)


def _fill_spec(spec, name: str, version: int, signature_name: str) -> None:
    """The model_spec of an answer: who answered (TF Serving names the version that served)."""
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature_name or "serving_default"


def _check_output_filter(wanted: list[str], outputs: dict) -> None:
    """TF Serving's checks of PredictRequest.output_filter: known aliases, each once."""
    for i, alias in enumerate(wanted):
        if alias not in outputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(outputs))}}}.",
            )
        if alias in wanted[:i]:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")


# numpy dtype kind/size -> TensorProto's typed value list (TF Serving's Tensor::AsProtoField)
_VALUE_FIELDS = {
    np.dtype(np.float32): "float_val",
    np.dtype(np.float64): "double_val",
    np.dtype(np.int8): "int_val",
    np.dtype(np.int16): "int_val",
    np.dtype(np.int32): "int_val",
    np.dtype(np.uint8): "int_val",
    np.dtype(np.uint16): "int_val",
    np.dtype(np.int64): "int64_val",
    np.dtype(np.uint32): "uint32_val",
    np.dtype(np.uint64): "uint64_val",
    np.dtype(np.bool_): "bool_val",
}


def tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """A response tensor as TF Serving writes it: values in the typed list of its dtype (float_val,
    int64_val, string_val ...), not packed into tensor_content."""
    value = np.asarray(value)
    field = _VALUE_FIELDS.get(value.dtype)
    if field is None and value.dtype.kind not in "OSU":
        return tf.make_tensor_proto(value)  # half, complex, ...: TensorFlow's own encoding
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(value.dtype if field else tf.string).as_datatype_enum)
    for size in value.shape:
        proto.tensor_shape.dim.add().size = size
    flat = value.reshape(-1)
    if field:
        getattr(proto, field).extend(flat.tolist())
    else:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    return proto


def declared_bytes(key: str, proto: tensor_pb2.TensorProto) -> int:
    """What a TensorProto takes once materialised: its declared shape times its dtype's size. A
    proto may declare far more values than it carries (TensorFlow repeats the last one to fill the
    shape: a few bytes can declare [1, 40000, 40000] uint8, 1.6 GB), so this is read from the shape,
    never from the payload."""
    count = 1  # an unknown rank is read as a scalar, as make_ndarray reads it
    for dim in () if proto.tensor_shape.unknown_rank else proto.tensor_shape.dim:
        if dim.size < 0:
            raise ServingError("INVALID_ARGUMENT", f"input {key!r}: dimension {dim.size} is negative")
        count *= dim.size
    if proto.dtype == tf.string.as_datatype_enum:
        carried = [len(value) for value in proto.string_val]
        last = carried[-1] if carried else 0
        return 8 * count + sum(carried[:count]) + max(0, count - len(carried)) * last  # pointer + bytes each
    try:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size
    except TypeError as error:
        raise ServingError("INVALID_ARGUMENT", f"input {key!r}: unreadable input tensor: {error}") from None
    return count * itemsize


def input_arrays(inputs, max_bytes: int) -> dict[str, np.ndarray]:
    """Each input TensorProto as an array, its declared size checked before any memory is spent on
    it: all inputs together may take at most `max_bytes` (MOODLOOP_MAX_UPLOAD_BYTES, the REST
    body's limit too)."""
    total = 0
    for key, proto in inputs.items():
        total += declared_bytes(key, proto)
        if total > max_bytes:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input tensors declare {total:,} bytes (shape x dtype); the limit is {max_bytes:,}"
                " (MOODLOOP_MAX_UPLOAD_BYTES)",
            )
    try:
        return {key: tf.make_ndarray(proto) for key, proto in inputs.items()}
    except (TypeError, ValueError) as error:
        raise ServingError("INVALID_ARGUMENT", f"unreadable input tensor: {error}") from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        call = self._call(request.model_spec, context)
        try:
            inputs = input_arrays(request.inputs, self.dataplane.settings.serving.max_upload_bytes)
        except ServingError as error:
            return _abort(context, error)
        try:
            served, outputs = self.dataplane.predict(call, inputs)
            _check_output_filter(list(request.output_filter), outputs)
        except ServingError as error:
            return _abort(context, error)
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, call.model, served, request.model_spec.signature_name)
        for key in request.output_filter or outputs:
            response.outputs[key].CopyFrom(tensor_proto(outputs[key]))
        return response

    def _call(self, model_spec, context: grpc.ServicerContext) -> Call:
        request_id = self._reply_with_request_id(context)
        client = dict(context.invocation_metadata()).get("x-client-id")
        return Call("grpc", *_spec(model_spec), model_spec.signature_name, client, request_id)

    def _reply_with_request_id(self, context: grpc.ServicerContext) -> str:
        """A new request id, sent back at once as `x-request-id` (what feedback refers to)."""
        request_id = self.dataplane.new_request_id()
        context.send_initial_metadata((("x-request-id", request_id),))
        return request_id

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext):
        return self._examples(request, context, tf_examples.CLASSIFY, classification_pb2.ClassificationResponse())

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext):
        return self._examples(request, context, tf_examples.REGRESS, regression_pb2.RegressionResponse())

    def _examples(self, request, context: grpc.ServicerContext, method: str, response):
        call = self._call(request.model_spec, context)
        try:
            served, result = self.dataplane.run_examples(call, method, tf_examples.serialized_examples(request.input))
        except ServingError as error:
            return _abort(context, error)
        _fill_spec(response.model_spec, call.model, served, request.model_spec.signature_name)
        response.result.CopyFrom(result)
        return response

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext):
        request_id = self._reply_with_request_id(context)
        client = dict(context.invocation_metadata()).get("x-client-id")
        calls = [
            (
                Call("grpc", *_spec(task.model_spec), task.model_spec.signature_name, client, request_id),
                task.method_name,
            )
            for task in request.tasks
        ]
        try:
            examples = tf_examples.serialized_examples(request.input)
            answers = self.dataplane.multi_inference(calls, examples)
        except ServingError as error:
            return _abort(context, error)
        response = inference_pb2.MultiInferenceResponse()
        for task, (served, result) in zip(request.tasks, answers, strict=True):
            entry = response.results.add()
            _fill_spec(entry.model_spec, task.model_spec.name, served, task.model_spec.signature_name)
            if task.method_name == tf_examples.CLASSIFY:
                entry.classification_result.CopyFrom(result)
            else:
                entry.regression_result.CopyFrom(result)
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        name, version, label = _spec(request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            return _abort(context, ServingError("INVALID_ARGUMENT", "Metadata field signature_def is required"))
        try:
            served, signature_defs = self.dataplane.signature_defs(name, version, label)
        except ServingError as error:
            return _abort(context, error)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        name, version, label = _spec(request.model_spec)
        try:
            states = self.dataplane.model_status(name, version, label)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in states:
            entry = response.model_version_status.add()
            entry.version = state.version
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = 2 if state.error else 0  # UNKNOWN / OK (tensorflow.error.Code)
            entry.status.error_message = state.error
        return response

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        """TF Serving's config reload: the new config replaces models.config and is applied now.

        It changes what is served (labels, versions, any SavedModel folder the gateway can read), so
        it takes the admin token as REST's /admin/* do, sent as `authorization: Bearer <token>`
        metadata; without MOODLOOP_ADMIN_TOKEN it is disabled. (TF Serving itself has no
        authentication: there the port must not be reachable by clients.)"""
        refusal = admin_refusal(self.dataplane.settings.serving.admin_token, context.invocation_metadata())
        if refusal:
            return _abort(context, refusal)
        response = model_management_pb2.ReloadConfigResponse()
        try:
            models_config.replace(self.dataplane.settings.serving_config, request.config)
            self.dataplane.reload()
        except (OSError, ValueError) as error:
            response.status.error_code = 3  # INVALID_ARGUMENT
            response.status.error_message = str(error)
        return response


def admin_refusal(admin_token: str, metadata) -> ServingError | None:
    """None when the call's `authorization` metadata holds the admin token, else why not."""
    if not admin_token:
        return ServingError("PERMISSION_DENIED", "config reload is disabled: set MOODLOOP_ADMIN_TOKEN")
    if not bearer_matches(dict(metadata or ()).get("authorization", ""), admin_token):
        return ServingError("UNAUTHENTICATED", "missing or wrong bearer token (metadata `authorization: Bearer ...`)")
    return None


def create_server(dataplane: DataPlane, address: str) -> tuple[grpc.Server, int]:
    """Admission as REST's (serving/admission.py): `max_concurrent_requests` handler threads, and
    RPCs beyond that many plus `max_queued_requests` refused at once with RESOURCE_EXHAUSTED. An
    RPC past its deadline keeps its thread until its handler returns, so threads stay bounded."""
    serving = dataplane.settings.serving
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=serving.max_concurrent_requests, thread_name_prefix="grpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
        maximum_concurrent_rpcs=serving.max_concurrent_requests + serving.max_queued_requests,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(dataplane), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dataplane), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, port
