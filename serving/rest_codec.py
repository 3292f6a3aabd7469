"""TF Serving's REST predict format: JSON request bodies to tensors, tensors to JSON responses.

Row format `{"instances": [...]}` answers `{"predictions": [...]}`; columnar format
`{"inputs": ...}` answers `{"outputs": ...}`. Binary values travel as `{"b64": "..."}`; string
outputs whose name ends in `_bytes` are returned that way too (TF Serving's rule).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from serving.backends import ServingError

Tensors = dict[str, np.ndarray]


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _b64(text: object) -> bytes:
    """Strict base64 (as TF Serving: no stray characters). b64decode(validate=True) checks with a
    regular expression, which was a quarter of the gateway's time on a request of 16 images;
    deleting the alphabet's bytes in C, then checking length and padding, does it in C (and also
    refuses padding that b64decode lets through: a lone "=", or one past a whole quantum)."""
    try:
        raw = text.encode("ascii") if isinstance(text, str) else None
        if raw is None or raw.translate(None, _B64_ALPHABET) or len(raw) % 4 or b"=" in raw[:-2]:
            raise binascii.Error  # a stray character, a cut length, or padding before the end
        return binascii.a2b_base64(raw)
    except (binascii.Error, UnicodeEncodeError):
        raise ServingError("INVALID_ARGUMENT", 'a {"b64": ...} value is not valid base64') from None


# A tensor has at most this many dimensions here (numpy's own limit, NPY_MAXDIMS in numpy 2). A
# body nested deeper is no tensor; without this bound, JSON of a few kilobytes nested 500 deep
# (the JSON parser takes up to 1,024) reached Python's recursion limit below: a 500, not a 400.
MAX_TENSOR_DEPTH = 64


def _decode_value(value: Any, depth: int = 0) -> Any:
    """Replace {"b64": ...} objects (at any depth up to MAX_TENSOR_DEPTH) by bytes; leave the rest alone."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return _b64(value["b64"])
        raise ServingError("INVALID_ARGUMENT", "unexpected JSON object where a tensor value was expected")
    if isinstance(value, list):
        if depth >= MAX_TENSOR_DEPTH:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"a tensor value nested deeper than {MAX_TENSOR_DEPTH} lists (no tensor has as many dimensions)",
            )
        return [_decode_value(v, depth + 1) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def _array(value: Any, name: str) -> np.ndarray:
    decoded = _decode_value(value)
    holds_bytes = _contains_bytes(decoded)
    try:
        array = np.array(decoded, dtype=object if holds_bytes else None)
    except ValueError:
        raise ServingError(
            "INVALID_ARGUMENT", f"input '{name}': ragged list (every row needs the same shape)"
        ) from None
    if array.dtype == object and not holds_bytes:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': ragged list (every row needs the same shape)")
    return array


def _contains_bytes(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, bytes)


def parse_predict_request(body: Any, input_names: list[str]) -> tuple[str, Tensors, str]:
    """-> (signature_name, inputs, "row" | "columnar"). `input_names` are the signature's inputs."""
    if not isinstance(body, dict):
        raise ServingError("INVALID_ARGUMENT", "JSON Value: request body must be a JSON object")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise ServingError(
            "INVALID_ARGUMENT",
            "Missing 'inputs' or 'instances' key"
            if not has_instances
            else "Request can have either 'instances' or 'inputs', not both",
        )
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty JSON list")
        named = isinstance(instances[0], dict) and set(instances[0]) != {"b64"}
        if named:
            if not all(isinstance(i, dict) for i in instances):
                raise ServingError("INVALID_ARGUMENT", "every instance must be an object with the same keys")
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise ServingError("INVALID_ARGUMENT", "every instance must have the same named inputs")
            return signature, {k: _array([i[k] for i in instances], k) for k in sorted(keys)}, "row"
        if len(input_names) != 1:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"the signature has {len(input_names)} inputs ({', '.join(input_names)}): name them in each instance",
            )
        return signature, {input_names[0]: _array(instances, input_names[0])}, "row"
    inputs = body["inputs"]
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        return signature, {k: _array(v, k) for k, v in inputs.items()}, "columnar"
    if len(input_names) != 1:
        raise ServingError("INVALID_ARGUMENT", f"the signature has {len(input_names)} inputs: name them in 'inputs'")
    return signature, {input_names[0]: _array(inputs, input_names[0])}, "columnar"


def _jsonable(name: str, value: np.ndarray) -> Any:
    if value.dtype == object or value.dtype.kind == "S":
        if name.endswith("_bytes"):
            encode = np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])
        else:
            encode = np.vectorize(
                lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b, otypes=[object]
            )
        return encode(value).tolist() if value.size else value.tolist()
    return value.tolist()


def predict_response(outputs: Tensors, style: str) -> dict[str, Any]:
    names = sorted(outputs)
    if style == "row":
        rows = len(next(iter(outputs.values())))
        columns = {name: _jsonable(name, outputs[name]) for name in names}
        if len(names) == 1:
            return {"predictions": columns[names[0]]}
        return {"predictions": [{name: columns[name][i] for name in names} for i in range(rows)]}
    columns = {name: _jsonable(name, outputs[name]) for name in names}
    return {"outputs": columns[names[0]] if len(names) == 1 else columns}


# TF Serving's mapping of status codes to HTTP (util/net_http ... ToHTTPStatusCode).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
