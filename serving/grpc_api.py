"""The gRPC surface: TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), with the protos of tensorflow-serving-api, so TF Serving's own clients work.

Clients may send `x-client-id` metadata (sticky traffic split); replies carry `x-request-id`.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from moodloop import models_config
from serving.backends import ServingError
from serving.dataplane import Call, DataPlane

MAX_MESSAGE = 64 << 20


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    return model_spec.name, version, label


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        name, version, label = _spec(request.model_spec)
        metadata = dict(context.invocation_metadata())
        call = Call(
            "grpc",
            name,
            version,
            label,
            request.model_spec.signature_name,
            metadata.get("x-client-id"),
            self.dataplane.new_request_id(),
        )
        context.send_initial_metadata((("x-request-id", call.request_id),))
        try:
            inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        except (TypeError, ValueError) as error:
            return _abort(context, ServingError("INVALID_ARGUMENT", f"unreadable input tensor: {error}"))
        try:
            served, outputs = self.dataplane.predict(call, inputs)
        except ServingError as error:
            return _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        wanted = set(request.output_filter)
        for key, value in outputs.items():
            if not wanted or key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        name, version, label = _spec(request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            return _abort(context, ServingError("INVALID_ARGUMENT", "Metadata field signature_def is required"))
        try:
            served, signature_defs = self.dataplane.backend.signature_defs(name, version, label)
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
            states = self.dataplane.backend.status(name, version, label)
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
        """TF Serving's config reload: the new config replaces models.config and is applied now."""

        response = model_management_pb2.ReloadConfigResponse()
        try:
            models_config.write(self.dataplane.settings.serving_config, request.config)
            self.dataplane.reload()
        except (OSError, ValueError) as error:
            response.status.error_code = 3  # INVALID_ARGUMENT
            response.status.error_message = str(error)
        return response


def create_server(dataplane: DataPlane, address: str, workers: int = 16) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(dataplane), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dataplane), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, port
