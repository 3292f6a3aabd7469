"""TF Serving's tf.Example APIs, transport-free: Classify, Regress and MultiInference.

As TF Serving's `classifier.cc`, `regressor.cc` and `multi_inference.cc` do: the request's examples
(`Input`: an example list, or examples sharing a context) are serialized, fed to the signature's one
string input `inputs`, and its outputs read back as classes/scores or regression values. Which
signatures qualify is decided by their structure, not their method name (TF Serving's default,
--enable_signature_method_name_check=false): TF2 models export these signatures as "predict".
The REST forms (`{"examples": [...], "context": {...}}` -> `{"results": ...}`) are in api_rest.md.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving.backends import ServingError

CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"
INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's examples as serialized protos, a [n] string tensor. Examples with a context
    are the context's features merged into each (TF Serving concatenates the two serializations,
    which protobuf reads as one merged message)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in listed.examples]
    else:
        raise ServingError("INVALID_ARGUMENT", "Input is empty")
    if not examples:
        raise ServingError("INVALID_ARGUMENT", "Input is empty")
    return np.array(examples, dtype=object)


def check_signature(method: str, name: str, signature: meta_graph_pb2.SignatureDef) -> None:
    """Refuse a signature that cannot answer `method`, with TF Serving's messages."""
    noun = "classification" if method == CLASSIFY else "regression"
    if len(signature.inputs) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
    if INPUTS not in signature.inputs:
        raise ServingError("INVALID_ARGUMENT", f"No {noun} inputs found in SignatureDef: {name}")
    if method == CLASSIFY:
        if len(signature.outputs) not in (1, 2):
            raise ServingError(
                "INVALID_ARGUMENT", f"Expected one or two output Tensors, found {len(signature.outputs)}"
            )
        if CLASSES not in signature.outputs and SCORES not in signature.outputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
                f"Signature was: {name}",
            )
    else:
        if len(signature.outputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor.")
        if OUTPUTS not in signature.outputs:
            raise ServingError("INVALID_ARGUMENT", f"No regression outputs found in SignatureDef: {name}")


def classification_result(outputs: dict[str, np.ndarray], examples: int) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for tensor, what, kinds in ((classes, "classes", "OSU"), (scores, "scores", "f")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise ServingError(
                "INVALID_ARGUMENT", f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}"
            )
        if tensor.dtype.kind not in kinds:
            wanted = "DT_STRING" if what == "classes" else "DT_FLOAT"
            raise ServingError("INVALID_ARGUMENT", f"Expected {what} Tensor of {wanted}. Got: {tensor.dtype}")
        if len(tensor) != examples:
            raise ServingError(
                "INVALID_ARGUMENT", f"Expected {what} output batch size of {examples}. Got: {len(tensor)}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}",
        )
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(examples):
        row = result.classifications.add()
        for c in range(width):
            entry = row.classes.add()
            if classes is not None:
                label = classes[i, c]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def regression_result(outputs: dict[str, np.ndarray], examples: int) -> regression_pb2.RegressionResult:
    values = outputs[OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}",
        )
    if len(values) != examples:
        raise ServingError(
            "INVALID_ARGUMENT", f"Input batch size did not match output batch size: {examples} vs. {len(values)}"
        )
    if values.dtype.kind != "f":
        raise ServingError("INVALID_ARGUMENT", f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
    return result


# ---------------------------------------------------------------- REST (api_rest.md)


def input_from_json(body: Any) -> input_pb2.Input:
    """`{"examples": [{feature: value}], "context": {feature: value}}` as an Input proto. A value is
    a number, a string, {"b64": ...}, or a list of one kind: floats for any number with a fraction,
    int64 when all are whole, bytes for strings (TF Serving's rules)."""
    if not isinstance(body, dict):
        raise ServingError("INVALID_ARGUMENT", "JSON Value: request body must be a JSON object")
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise ServingError("INVALID_ARGUMENT", "'examples' key must be an array of JSON objects")
    request_input = input_pb2.Input()
    if "context" in body:
        listed = request_input.example_list_with_context
        _fill_features(listed.context, body["context"])
    else:
        listed = request_input.example_list
    for example in examples:
        _fill_features(listed.examples.add(), example)
    return request_input


def _fill_features(example: example_pb2.Example, features: Any) -> None:
    if not isinstance(features, dict):
        raise ServingError("INVALID_ARGUMENT", "an example must be a JSON object of features")
    for name, value in features.items():
        _fill_feature(example.features.feature[name], name, value if isinstance(value, list) else [value])


def _fill_feature(feature: feature_pb2.Feature, name: str, values: list) -> None:
    if all(isinstance(v, bool) for v in values) or not values:
        raise ServingError("INVALID_ARGUMENT", f"feature '{name}': a number, a string or a list of one kind")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    elif all(isinstance(v, str | dict) for v in values):
        feature.bytes_list.value.extend(_bytes(name, v) for v in values)
    else:
        raise ServingError("INVALID_ARGUMENT", f"feature '{name}': values of mixed kinds")


def _bytes(name: str, value: str | dict) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ServingError("INVALID_ARGUMENT", f'feature \'{name}\': an object must be {{"b64": "..."}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except binascii.Error:
        raise ServingError("INVALID_ARGUMENT", f"feature '{name}': not valid base64") from None


def classification_json(result: classification_pb2.ClassificationResult) -> dict:
    return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}


def regression_json(result: regression_pb2.RegressionResult) -> dict:
    return {"results": [r.value for r in result.regressions]}
