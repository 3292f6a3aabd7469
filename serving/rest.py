"""The REST surface: TF Serving's REST API, plus face analysis, feedback, metrics and admin.

TF Serving's paths and shapes (parsed with TF Serving's own regular expressions, so a malformed
path, a missing name or a version that is not a number answers as TF Serving does: 400):
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   {"instances": ...} | {"inputs": ...}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify  {"examples": [...], "context": {...}}
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress   (the same)
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
Errors are {"error": "..."} with TF Serving's HTTP codes.
moodloop's own:
  GET  /                    the faces page (serving/web/: photo, video, webcam, why?, corrections)
  POST /v1/faces:analyze    a photo (body or multipart "file") -> faces, boxes, emotions [?explain=1]
  POST /v1/videos:analyze   a video -> an emotions timeline per person
  POST /v1/feedback         {"request_id": ..., "label": ..., "instance": 0}
  GET  /v1/labelling/next   the next face the labelling queue asks about (the Label tab)
  POST /v1/labelling/answer {"face_id": ..., "answer": <emotion> | "not_a_face" | "skip"}
  POST /v1/labelling/deliver  the faces labelled so far, as a landing batch now
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/edge[/{file}]   TFLite files for devices
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/card [?format=json]   the version's model card
  GET  /v1/panel            the model panel: versions, labels, share, latest gate, drift and canary verdicts
  GET  /metrics             Prometheus (also /monitoring/prometheus/metrics, TF Serving's path)
  POST /admin/reload | /admin/promote | /admin/rollback, PUT /admin/traffic  (Bearer token)
Every prediction answers with an `x-request-id` header: the id feedback refers to.

Shaped like KServe's REST server: the endpoints are methods of one class over the transport-free
gateway (serving/dataplane.py), the routes are declared in one table (`routes`), and errors are
turned into responses by handlers registered once (`EXCEPTION_HANDLERS`): an endpoint raises.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from moodloop.core import status
from moodloop.core.contracts import API_FACES_PAGE
from serving import examples as tf_examples
from serving.admission import RateLimiter, WorkSlots, bearer_matches
from serving.backends import ServingError
from serving.dataplane import Call, DataPlane
from serving.faces import BadMediaError, analyze_photo, analyze_video
from serving.panel import BIAS_IMAGE_PATH, DRIFT_REPORT_PATH, GATE_IMAGE_PATH, model_panel, panel_file
from serving.rest_codec import HTTP_STATUS, parse_predict_request, predict_response
from serving.tracking import timeline_csv
from serving.version_assets import edge_file, edge_metadata, model_card

WEB_DIR = Path(__file__).parent / "web"  # the faces page: static HTML, JS and CSS, no build step


class HttpError(Exception):
    """A refusal that is not one of TF Serving's status codes (413, 401, 403, a bad admin call)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def payload_too_large(message: str) -> HttpError:
    return HttpError(413, message)


class _Segment(Convertor):
    """A path segment matched by `regex`, passed on as text."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class FastJSONResponse(JSONResponse):
    """The predict answer, serialized by orjson (floats as Python's repr, like json)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json_response(content: dict, headers: dict[str, str], finite: bool) -> JSONResponse:
    """orjson, unless a value is NaN or infinite: orjson writes those as null, where TF Serving
    writes the tokens NaN, Infinity and -Infinity (api_rest.md), as Python's json does."""
    if finite:
        return FastJSONResponse(content, headers=headers)
    return Response(json.dumps(content, allow_nan=True), media_type="application/json", headers=headers)


def _numbers(value: Any):
    """Every float in a nested list (a classify or regress answer: small)."""
    if isinstance(value, float):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _all_finite(outputs: dict[str, np.ndarray]) -> bool:
    return all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind in "fc")


register_url_convertor("model", _Segment("[^/:]+"))  # TF Serving's paths put ":predict" right after a name
register_url_convertor("digits", _Segment("[0-9]+"))


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise payload_too_large(f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise payload_too_large(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _client_id(request: Request) -> str | None:
    return request.headers.get("x-client-id") or None


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _model_path(request: Request) -> tuple[str, int | None, str | None]:
    """(name, version, label) of moodloop's own model subresources (edge files, model card)."""
    params = request.path_params
    version = params.get("version")
    return params["name"], _version_number(version) if version is not None else None, params.get("label")


# TF Serving's http_rest_api_util.cc, verbatim: what a POST and a GET under /v1/models may be.
PREDICTION_API = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
MODEL_STATUS_API = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)


def _version_number(text: str) -> int:
    version = int(text)
    if version >= 2**63:  # TF Serving parses versions as int64
        raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {text} to numeric.")
    return version


def parse_model_request(method: str, path: str) -> tuple[str, int | None, str | None, str] | None:
    """TF Serving's ParseModelInfo: (name, version, label, verb or subresource) of a request under
    /v1/models, or None when the path is not one of TF Serving's (-> "Malformed request")."""
    pattern = {"POST": PREDICTION_API, "GET": MODEL_STATUS_API}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        return None
    name, version, label, what = match.groups()
    return (
        unquote(name or ""),
        _version_number(version) if version else None,
        unquote(label) if label else None,
        what or "",
    )


class _EndpointGroup:
    """What every route group shares: the data plane and one set of work slots (admission is
    gateway-wide, whichever group a request reaches). Each endpoint raises; the app's handlers answer."""

    def __init__(self, dataplane: DataPlane, work: WorkSlots) -> None:
        self.dataplane = dataplane
        self.settings = dataplane.settings
        self.limit = dataplane.settings.serving.max_upload_bytes
        self.work = work

    async def _in_thread(self, function, *args, timeout: float | None = None):
        """The request's work on one of the gateway's work slots (serving/admission.py)."""
        return await self.work.run(function, *args, timeout=timeout or self.settings.serving.request_timeout_seconds)


class TFServingEndpoints(_EndpointGroup):
    """TF Serving's REST API (api_rest.md): model status, metadata, predict, classify and regress, with
    TF Serving's paths, bodies and errors; and its "Malformed request" for any other path under /v1."""

    async def tfserving_api(self, request: Request) -> Response:
        """Every request under /v1/models that is not one of moodloop's own subresources, dispatched
        as TF Serving's HttpRestApiHandler::ProcessRequest does."""
        path = request.scope["path"]
        parsed = parse_model_request(request.method, path)
        if parsed is None:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method} {path}")
        name, version, label, what = parsed
        if request.method == "POST" and what == "predict":
            return await self.predict(request, name, version, label)
        if request.method == "POST" and what in ("classify", "regress"):
            return await self.classify_or_regress(request, name, version, label, what)
        if request.method == "GET":
            if not name:
                raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
            if what == "metadata":
                return await self._in_thread(self._metadata, name, version, label)
            return await self.model_status(name, version, label)
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method} {path}")

    async def malformed(self, request: Request) -> Response:
        """A path under /v1 that neither TF Serving nor moodloop serves: TF Serving's answer."""
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method} {request.scope['path']}")

    async def model_status(self, name: str, version: int | None, label: str | None) -> Response:
        states = await self._in_thread(self.dataplane.model_status, name, version, label)
        return JSONResponse(
            {
                "model_version_status": [
                    {
                        "version": str(s.version),
                        "state": s.state,
                        "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error},
                    }
                    for s in states
                ]
            }
        )

    def _metadata(self, name: str, version: int | None, label: str | None) -> Response:
        from tensorflow_serving.apis import get_model_metadata_pb2

        served, signature_defs = self.dataplane.signature_defs(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        # As TF Serving prints it: every field, defaults included ("name": "" of a dim, ...).
        printed = json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True, including_default_value_fields=True
        )
        return JSONResponse(
            {
                "model_spec": {"name": name, "signature_name": "", "version": str(served)},
                "metadata": {"signature_def": printed},
            }
        )

    async def _json_body(self, request: Request) -> Any:
        raw = await _body(request, self.limit)
        if not raw.strip():
            raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
        try:
            return orjson.loads(raw)  # several times faster than json on b64 bodies
        except orjson.JSONDecodeError:
            pass
        try:  # api_rest.md allows NaN, Infinity and -Infinity, which strict JSON (orjson) does not
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: [[[[...
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: Invalid value. ({error})") from None

    @staticmethod
    def _signature_name(body: Any) -> str:
        signature_name = body.get("signature_name", "") if isinstance(body, dict) else ""
        if not isinstance(signature_name, str):
            raise ServingError("INVALID_ARGUMENT", "'signature_name' key must be a string value.")
        return signature_name

    async def predict(self, request: Request, name: str, version: int | None, label: str | None) -> Response:
        body = await self._json_body(request)
        call = Call("rest", name, version, label, "", _client_id(request), self.dataplane.new_request_id())
        signature_name = self._signature_name(body)

        def run() -> dict[str, Any]:
            _, signature_defs = self.dataplane.signature_defs(name, version, label)
            key = signature_name or "serving_default"
            signature = signature_defs.get(key)
            if signature is None:
                raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{key}" not found in signature def')
            signature_key, inputs, style = parse_predict_request(body, sorted(signature.inputs))
            pinned = Call(call.api, name, version, label, signature_key, call.client_id, call.request_id)
            _, outputs = self.dataplane.predict(pinned, inputs)
            return predict_response(outputs, style), _all_finite(outputs)

        result, finite = await self._in_thread(run)
        return _json_response(result, {"x-request-id": call.request_id}, finite)

    async def classify_or_regress(
        self, request: Request, name: str, version: int | None, label: str | None, verb: str
    ) -> Response:
        body = await self._json_body(request)
        signature_name = self._signature_name(body)
        call = Call("rest", name, version, label, signature_name, _client_id(request), self.dataplane.new_request_id())
        method = tf_examples.CLASSIFY if verb == "classify" else tf_examples.REGRESS

        def run() -> dict[str, Any]:
            examples = tf_examples.serialized_examples(tf_examples.input_from_json(body))
            _, result = self.dataplane.run_examples(call, method, examples)
            if method == tf_examples.CLASSIFY:
                return tf_examples.classification_json(result)
            return tf_examples.regression_json(result)

        result = await self._in_thread(run)
        finite = all(math.isfinite(v) for v in _numbers(result["results"]))
        return _json_response(result, {"x-request-id": call.request_id}, finite)

    def routes(self) -> list[Route]:
        return [Route("/v1/models{rest:path}", self.tfserving_api, methods=ANY_METHOD)]  # TF Serving answers any

    def fallback(self) -> list[Route]:
        """Last: a path under /v1 that no route serves answers TF Serving's "Malformed request"."""
        return [Route("/v1/{rest:path}", self.malformed, methods=ANY_METHOD)]


class FacesEndpoints(_EndpointGroup):
    """moodloop's own API for the people who analyse faces: photos and videos, feedback labels, the
    faces page and its model panel, and each model's edge files and card."""

    def __init__(self, dataplane: DataPlane, work: WorkSlots) -> None:
        super().__init__(dataplane, work)
        self.feedback_rate = RateLimiter(dataplane.settings.serving.feedback_per_minute)

    async def edge_metadata(self, request: Request) -> Response:
        base_url = str(request.base_url).rstrip("/")
        metadata = await self._in_thread(edge_metadata, self.dataplane, *_model_path(request), base_url)
        return JSONResponse(metadata)

    async def edge_file(self, request: Request) -> Response:
        path = await self._in_thread(edge_file, self.dataplane, *_model_path(request), request.path_params["file"])
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    async def card(self, request: Request) -> Response:
        as_json = request.query_params.get("format", "html") == "json"
        path = await self._in_thread(model_card, self.dataplane, *_model_path(request), as_json)
        return FileResponse(path, media_type="application/json" if as_json else "text/html")

    async def faces(self, request: Request) -> Response:
        dataplane, settings = self.dataplane, self.settings
        explain = _flag(request, "explain")

        async def analyze(data, classify, annotate):
            def run():  # gateway.detector is per thread: read it on the worker thread that detects
                return analyze_photo(
                    data,
                    dataplane.detector,
                    classify,
                    settings.max_image_pixels,
                    annotate,
                    settings.serving.min_confidence,
                    explain,
                )

            return await self._in_thread(run)

        return await self._analyze(request, API_FACES_PAGE, "image/jpeg", analyze)

    async def videos(self, request: Request) -> Response:
        dataplane, settings = self.dataplane, self.settings

        output_format = request.query_params.get("format", "json")
        if output_format not in ("json", "csv"):
            raise BadMediaError("'format' must be json or csv")
        as_csv = output_format == "csv"

        async def analyze(data, classify, annotate):
            every = float(request.query_params.get("every", "0.5"))
            if not 0.04 <= every <= 60:
                raise BadMediaError("'every' (seconds between sampled frames) must be between 0.04 and 60")
            smooth = int(request.query_params.get("smooth", "1"))
            if not 1 <= smooth <= 30:
                raise BadMediaError("'smooth' (sampled frames averaged per person) must be between 1 and 30")
            if as_csv and annotate:
                raise BadMediaError("ask for the annotated video or the CSV timeline, not both")

            def run():  # gateway.detector is per thread: read it on the worker thread that detects
                detector, limit = dataplane.detector, settings.max_image_pixels
                return analyze_video(
                    data,
                    detector,
                    classify,
                    limit,
                    every,
                    600,
                    annotate,
                    min_confidence=settings.serving.min_confidence,
                    smooth=smooth,
                )

            try:
                result, video = await self._in_thread(run, timeout=max(60.0, settings.serving.request_timeout_seconds))
            except ServingError as error:
                if error.code == "DEADLINE_EXCEEDED":
                    error.message = "videos analysis took too long; send something smaller"
                raise
            return result, (timeline_csv(result["timeline"]).encode() if as_csv else video)

        return await self._analyze(request, "videos", "text/csv" if as_csv else "video/mp4", analyze)

    async def _analyze(self, request: Request, api: str, media_type: str, analyze) -> Response:
        """Shared by photos and videos: upload, analyze in a worker thread, JSON or annotated media."""
        call = Call(api, self.settings.model_name, None, None, "", _client_id(request), self.dataplane.new_request_id())
        data = await self._upload(request)
        try:
            # Photos keep their face crops for corrections; videos and live webcam frames (live=1) do not.
            keep_faces = api == API_FACES_PAGE and not _flag(request, "live")
            classify = self.dataplane.classifier(call, keep_faces)
            result, media = await analyze(data, classify, _flag(request, "annotate"))
        except ValueError as error:  # what the decoders say of a broken or hostile file
            raise BadMediaError(str(error)) from error
        model = classify.answered_by()  # the version that read the faces: the JSON and the headers say it
        headers = {"x-request-id": call.request_id, "x-model-version": str(model["version"] or "")}
        headers["x-model-label"] = model["label"] or ""
        if media is not None:
            return Response(media, media_type=media_type, headers=headers)
        return JSONResponse({"request_id": call.request_id, "model": model, **result}, headers=headers)

    async def _upload(self, request: Request) -> bytes:
        raw = await _body(request, self.limit)  # bounded while it streams, Content-Length or chunked
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return raw

        # Starlette's form parser bounds the fields but spools a file part of any size, so the
        # multipart body is read (bounded) first and parsed from memory: one file, a few fields.
        async def replay() -> dict:
            return {"type": "http.request", "body": raw, "more_body": False}

        async with Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=self.limit) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadMediaError("multipart upload needs a 'file' field")
            return await upload.read()

    async def feedback(self, request: Request) -> Response:
        """A label for an earlier prediction. Labels feed the canary's rollback rule and become
        training batches, so the sender may be asked for MOODLOOP_FEEDBACK_TOKEN, and each client
        address sends at most MOODLOOP_FEEDBACK_PER_MINUTE (429 beyond, before the body is read, with
        Retry-After: the whole seconds until the client may send the next)."""
        sender, refused = self._labeller(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await _body(request, 64 * 1024))
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "body must be a JSON object")
            record, face = await self._in_thread(
                self.dataplane.feedback,
                body.get("request_id", ""),
                body.get("label", ""),
                int(body.get("instance", 0)),
                sender,
            )
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as error:
            raise ServingError("INVALID_ARGUMENT", f"feedback: {error}") from None
        answer = {"request_id": record.request_id, "instance": record.instance, "label": record.label, "face": face}
        return JSONResponse(answer, 202)

    def _labeller(self, request: Request) -> tuple[str, Response | None]:
        """Who sends a label -> (sender, None), or (sender, the 429 to answer). Labels feed the
        canary's rule and training, so MOODLOOP_FEEDBACK_TOKEN is asked for when set (401), and each
        client address sends at most MOODLOOP_FEEDBACK_PER_MINUTE (Retry-After: whole seconds)."""
        token = self.settings.serving.feedback_token
        if token and not bearer_matches(request.headers.get("authorization", ""), token):
            raise HttpError(401, "labels need the feedback token: Authorization: Bearer <MOODLOOP_FEEDBACK_TOKEN>")
        client = request.client.host if request.client else "unknown"
        sender = f"{client} (feedback token)" if token else client
        if wait := self.feedback_rate.take(client):  # a well-behaved labeller waits Retry-After and resends
            per_minute = self.settings.serving.feedback_per_minute
            refused = _error("RESOURCE_EXHAUSTED", f"feedback rate limit: {per_minute:g} a minute per client")
            refused.headers["retry-after"] = str(math.ceil(wait))
            return sender, refused
        return sender, None

    async def label_next(self, request: Request) -> Response:
        """The next face the labelling queue asks about (the Label tab)."""
        return JSONResponse(await self._in_thread(self.dataplane.label_next), headers={"Cache-Control": "no-store"})

    async def label_answer(self, request: Request) -> Response:
        """{"face_id": ..., "answer": <emotion> | "not_a_face" | "skip"}: the same token and rate
        as feedback."""
        sender, refused = self._labeller(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await _body(request, 16 * 1024))
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "body must be a JSON object")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ServingError("INVALID_ARGUMENT", f"label: {error}") from None
        answer = await self._in_thread(self.dataplane.label_answer, body.get("face_id"), body.get("answer"), sender)
        return JSONResponse(answer, 202)

    async def label_deliver(self, request: Request) -> Response:
        """Send the faces labelled so far as a landing batch now, before the budget is reached."""
        _, refused = self._labeller(request)
        if refused is not None:
            return refused
        return JSONResponse(await self._in_thread(self.dataplane.label_deliver), 202)

    async def page(self, request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def panel(self, request: Request) -> Response:
        return JSONResponse(await self._in_thread(model_panel, self.dataplane))

    def panel_file_endpoint(self, name: str, media_type: str):
        async def endpoint(request: Request) -> Response:
            path = panel_file(self.dataplane, name)
            if path is None:
                raise HttpError(404, f"no {name} yet: it appears after the first A/B gate or drift window")
            return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

        return endpoint

    def model_subresources(self) -> list[Route]:
        """moodloop's subresources of a model (edge files, card): before TF Serving's /v1/models."""
        model = "/v1/models/{name:model}"
        addressed = (model, model + "/versions/{version:digits}", model + "/labels/{label:model}")
        return [
            *(Route(path + "/edge", self.edge_metadata, methods=["GET"]) for path in addressed),
            *(Route(path + "/edge/{file}", self.edge_file, methods=["GET"]) for path in addressed),
            *(Route(path + "/card", self.card, methods=["GET"]) for path in addressed),
        ]

    def routes(self) -> list[Route]:
        return [
            Route("/v1/faces:analyze", self.faces, methods=["POST"]),
            Route("/v1/videos:analyze", self.videos, methods=["POST"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/v1/labelling/next", self.label_next, methods=["GET"]),
            Route("/v1/labelling/answer", self.label_answer, methods=["POST"]),
            Route("/v1/labelling/deliver", self.label_deliver, methods=["POST"]),
            Route("/", self.page, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
            Route("/v1/panel", self.panel, methods=["GET"]),
            Route(GATE_IMAGE_PATH, self.panel_file_endpoint(status.GATE_IMAGE, "image/png"), methods=["GET"]),
            Route(BIAS_IMAGE_PATH, self.panel_file_endpoint(status.BIAS_IMAGE, "image/png"), methods=["GET"]),
            Route(DRIFT_REPORT_PATH, self.panel_file_endpoint(status.DRIFT_REPORT, "text/html"), methods=["GET"]),
        ]


class AdminEndpoints(_EndpointGroup):
    """Operations: health, Prometheus metrics, and the token-protected label moves (reload, promote,
    rollback, the canary's traffic share)."""

    async def metrics(self, request: Request) -> Response:
        self.dataplane.refresh_log_metrics()
        return Response(generate_latest(self.dataplane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        model = self.settings.model_name
        labels = self.dataplane.labels(model)
        try:
            states = self.dataplane.model_status(model, None, None)
        except ServingError as error:
            return JSONResponse({"ready": False, "reason": error.message}, status_code=503)
        available = [s.version for s in states if s.state == "AVAILABLE"]
        body = {"ready": bool(available), "model": model, "available_versions": available, "labels": labels}
        replicas = self.dataplane.replicas()
        if replicas:  # the tfserving backend: which replicas answer, and how many calls each took
            body["replicas"] = replicas
        return JSONResponse(body, status_code=200 if available else 503)

    def _authorise(self, request: Request) -> str:
        """The model the admin call is about; raises unless the caller holds the admin token."""
        if not self.settings.serving.admin_token:
            raise HttpError(403, "admin endpoints are disabled: set MOODLOOP_ADMIN_TOKEN")
        if not bearer_matches(request.headers.get("authorization", ""), self.settings.serving.admin_token):
            raise HttpError(401, "missing or wrong bearer token")
        return request.query_params.get("model", self.settings.model_name)

    async def _admin(self, request: Request, action) -> Any:
        model = self._authorise(request)
        try:
            return model, await action(model)
        except (LookupError, ValueError, TypeError) as error:
            raise HttpError(400, str(error)) from error

    async def reload(self, request: Request) -> Response:
        model, _ = await self._admin(request, lambda _: run_in_threadpool(self.dataplane.reload))
        return JSONResponse({"reloaded": True, "labels": self.dataplane.labels(model)})

    async def promote(self, request: Request) -> Response:
        model, version = await self._admin(request, self._moving_labels(self.dataplane.promote))
        return JSONResponse({"promoted": version, "labels": self.dataplane.labels(model)})

    async def rollback(self, request: Request) -> Response:
        model, version = await self._admin(request, self._moving_labels(self.dataplane.rollback))
        return JSONResponse({"rolled_back": version, "labels": self.dataplane.labels(model)})

    def _moving_labels(self, move):
        async def action(model: str):
            version = await run_in_threadpool(move, model)
            await run_in_threadpool(self.dataplane.reload)
            return version

        return action

    async def traffic(self, request: Request) -> Response:
        async def action(_: str) -> float:
            if request.method == "PUT":
                return self.dataplane.set_traffic_share(json.loads(await _body(request, 4096))["canary_share"])
            return self.dataplane.traffic_share()

        _, share = await self._admin(request, action)
        return JSONResponse({"canary_share": share})

    def routes(self) -> list[Route]:
        return [
            Route("/metrics", self.metrics),
            Route("/monitoring/prometheus/metrics", self.metrics),
            Route("/healthz", self.health),
            Route("/admin/reload", self.reload, methods=["POST"]),
            Route("/admin/promote", self.promote, methods=["POST"]),
            Route("/admin/rollback", self.rollback, methods=["POST"]),
            Route("/admin/traffic", self.traffic, methods=["GET", "PUT"]),
        ]


ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def routes(dataplane: DataPlane) -> list[Route]:
    """The REST API: three route groups over one data plane, in the order they must be matched.
    moodloop's subresources of a model (edge files, card) first; then everything else under
    /v1/models goes to TF Serving's dispatcher; the faces API and operations; and last, any other
    path under /v1 answers TF Serving's "Malformed request"."""
    serving = dataplane.settings.serving
    work = WorkSlots(serving.max_concurrent_requests, serving.max_queued_requests)
    tfserving, faces, admin = (group(dataplane, work) for group in (TFServingEndpoints, FacesEndpoints, AdminEndpoints))
    return [*faces.model_subresources(), *tfserving.routes(), *faces.routes(), *admin.routes(), *tfserving.fallback()]


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=HTTP_STATUS.get(code, 500))


async def _serving_error(request: Request, error: ServingError) -> Response:
    return _error(error.code, error.message)


async def _http_error(request: Request, error: HttpError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status)


async def _bad_media(request: Request, error: BadMediaError) -> Response:
    return JSONResponse({"error": str(error)}, status_code=400)


async def _no_route(request: Request, error: HTTPException) -> Response:
    if error.status_code == 404:  # TF Serving's answer to a path it does not serve
        return _error("NOT_FOUND", f"Malformed request: {request.method} {request.url.path}")
    return JSONResponse({"error": f"{request.method} {request.url.path}: {error.detail}"}, error.status_code)


EXCEPTION_HANDLERS = {
    ServingError: _serving_error,
    HttpError: _http_error,
    BadMediaError: _bad_media,
    HTTPException: _no_route,
}


def create_app(dataplane: DataPlane) -> Starlette:
    """The gateway's REST app (ASGI): TF Serving's REST API and moodloop's own endpoints."""
    return Starlette(routes=routes(dataplane), exception_handlers=EXCEPTION_HANDLERS)
