"""The REST surface: TF Serving's REST API, plus face analysis, feedback, metrics and admin.

TF Serving's paths and shapes:
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   {"instances": ...} | {"inputs": ...}
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
Errors are {"error": "..."} with TF Serving's HTTP codes.
moodloop's own:
  GET  /                    the faces page (serving/web/: photo, video, webcam, why?, corrections)
  POST /v1/faces:analyze    a photo (body or multipart "file") -> faces, boxes, emotions [?explain=1]
  POST /v1/videos:analyze   a video -> an emotions timeline per person
  POST /v1/feedback         {"request_id": ..., "label": ..., "instance": 0}
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

import asyncio
import hmac
import json
from pathlib import Path
from typing import Any

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

from moodloop import status
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


class _ModelName(Convertor):
    regex = "[^/:]+"  # TF Serving's paths put ":predict" right after the name or label

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _Version(Convertor):
    regex = "-?[0-9]+"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


class FastJSONResponse(JSONResponse):
    """The predict answer, serialized by orjson (floats as Python's repr, like json)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


register_url_convertor("model", _ModelName())
register_url_convertor("version", _Version())


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
    params = request.path_params
    return params["name"], params.get("version"), params.get("label")


class RestEndpoints:
    """The REST API's endpoints over one gateway; each raises, the app's handlers answer."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.settings = dataplane.settings
        self.limit = dataplane.settings.serving.max_upload_bytes

    async def _in_thread(self, function, *args):
        timeout = self.settings.serving.request_timeout_seconds
        try:
            return await asyncio.wait_for(run_in_threadpool(function, *args), timeout)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", f"Deadline Exceeded ({timeout:g} s)") from None

    # TF Serving's API
    async def model_status(self, request: Request) -> Response:
        states = await self._in_thread(self.dataplane.backend.status, *_model_path(request))
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

    async def model_metadata(self, request: Request) -> Response:
        return await self._in_thread(self._metadata, *_model_path(request))

    def _metadata(self, name: str, version: int | None, label: str | None) -> Response:
        from tensorflow_serving.apis import get_model_metadata_pb2

        served, signature_defs = self.dataplane.backend.signature_defs(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        return JSONResponse(
            {
                "model_spec": {"name": name, "signature_name": "", "version": str(served)},
                "metadata": {
                    "signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
                },
            }
        )

    async def predict(self, request: Request) -> Response:
        name, version, label = _model_path(request)
        raw = await _body(request, self.limit)
        try:
            body = orjson.loads(raw)  # several times faster than json on b64 bodies
        except orjson.JSONDecodeError as error:
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {error}") from None
        call = Call("rest", name, version, label, "", _client_id(request), self.dataplane.new_request_id())
        signature_name = body.get("signature_name", "") if isinstance(body, dict) else ""

        def run() -> dict[str, Any]:
            _, signature_defs = self.dataplane.backend.signature_defs(name, version, label)
            signature = signature_defs.get(signature_name or "serving_default")
            if signature is None:
                key = signature_name or "serving_default"
                raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
            signature_key, inputs, style = parse_predict_request(body, sorted(signature.inputs))
            pinned = Call(call.api, name, version, label, signature_key, call.client_id, call.request_id)
            _, outputs = self.dataplane.predict(pinned, inputs)
            return predict_response(outputs, style)

        result = await self._in_thread(run)
        return FastJSONResponse(result, headers={"x-request-id": call.request_id})

    async def classify_or_regress(self, request: Request) -> Response:
        verb = request.url.path.rsplit(":", 1)[1]
        raise ServingError("UNIMPLEMENTED", f"{verb} is not offered: the emotion models use predict")

    # edge models for devices
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

    # face analysis
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

        return await self._analyze(request, "faces", "image/jpeg", analyze)

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

            work = run_in_threadpool(run)
            try:
                result, video = await asyncio.wait_for(
                    work, timeout=max(60.0, settings.serving.request_timeout_seconds)
                )
            except asyncio.TimeoutError:
                message = "videos analysis took too long; send something smaller"
                raise ServingError("DEADLINE_EXCEEDED", message) from None
            return result, (timeline_csv(result["timeline"]).encode() if as_csv else video)

        return await self._analyze(request, "videos", "text/csv" if as_csv else "video/mp4", analyze)

    async def _analyze(self, request: Request, api: str, media_type: str, analyze) -> Response:
        """Shared by photos and videos: upload, analyze in a worker thread, JSON or annotated media."""
        call = Call(api, self.settings.model_name, None, None, "", _client_id(request), self.dataplane.new_request_id())
        data = await self._upload(request)
        try:
            # Photos keep their face crops for corrections; videos and live webcam frames (live=1) do not.
            keep_faces = api == "faces" and not _flag(request, "live")
            classify = self.dataplane.classifier(call, keep_faces)
            result, media = await analyze(data, classify, _flag(request, "annotate"))
        except ValueError as error:  # what the decoders say of a broken or hostile file
            raise BadMediaError(str(error)) from error
        headers = {"x-request-id": call.request_id}
        if media is not None:
            return Response(media, media_type=media_type, headers=headers)
        return JSONResponse({"request_id": call.request_id, **result}, headers=headers)

    async def _upload(self, request: Request) -> bytes:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.limit:
                raise payload_too_large(f"request body is {int(declared)} bytes; the limit is {self.limit}")
            async with request.form(max_part_size=self.limit) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise BadMediaError("multipart upload needs a 'file' field")
                return await upload.read()
        return await _body(request, self.limit)

    async def feedback(self, request: Request) -> Response:
        try:
            body = json.loads(await _body(request, 64 * 1024))
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "body must be a JSON object")
            record, face = await self._in_thread(
                self.dataplane.feedback, body.get("request_id", ""), body.get("label", ""), int(body.get("instance", 0))
            )
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as error:
            raise ServingError("INVALID_ARGUMENT", f"feedback: {error}") from None
        answer = {"request_id": record.request_id, "instance": record.instance, "label": record.label, "face": face}
        return JSONResponse(answer, 202)

    # the faces page
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

    # operations
    async def metrics(self, request: Request) -> Response:
        self.dataplane.refresh_log_metrics()
        return Response(generate_latest(self.dataplane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        model = self.settings.model_name
        labels = self.dataplane.backend.labels(model)
        try:
            states = self.dataplane.backend.status(model, None, None)
        except ServingError as error:
            return JSONResponse({"ready": False, "reason": error.message}, status_code=503)
        available = [s.version for s in states if s.state == "AVAILABLE"]
        body = {"ready": bool(available), "model": model, "available_versions": available, "labels": labels}
        return JSONResponse(body, status_code=200 if available else 503)

    # admin (Bearer token)
    def _authorise(self, request: Request) -> str:
        """The model the admin call is about; raises unless the caller holds the admin token."""
        if not self.settings.serving.admin_token:
            raise HttpError(403, "admin endpoints are disabled: set MOODLOOP_ADMIN_TOKEN")
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), self.settings.serving.admin_token.encode()):
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
        return JSONResponse({"reloaded": True, "labels": self.dataplane.backend.labels(model)})

    async def promote(self, request: Request) -> Response:
        model, version = await self._admin(request, self._moving_labels(self.dataplane.promote))
        return JSONResponse({"promoted": version, "labels": self.dataplane.backend.labels(model)})

    async def rollback(self, request: Request) -> Response:
        model, version = await self._admin(request, self._moving_labels(self.dataplane.rollback))
        return JSONResponse({"rolled_back": version, "labels": self.dataplane.backend.labels(model)})

    def _moving_labels(self, move):
        async def action(model: str):
            version = await run_in_threadpool(move, model)
            await run_in_threadpool(self.dataplane.reload)
            return version

        return action

    async def traffic(self, request: Request) -> Response:
        async def action(_: str) -> float:
            if request.method == "PUT":
                self.dataplane.traffic.set(json.loads(await _body(request, 4096))["canary_share"])
            return self.dataplane.traffic.share()

        _, share = await self._admin(request, action)
        return JSONResponse({"canary_share": share})


def routes(endpoints: RestEndpoints) -> list[Route]:
    """The REST API, one route per line. A model is addressed as TF Serving does: by name, by
    name and version, or by name and label."""
    model = "/v1/models/{name:model}"
    addressed = (model, model + "/versions/{version:version}", model + "/labels/{label:model}")
    return [
        *(Route(path, endpoints.model_status, methods=["GET"]) for path in addressed),
        *(Route(path + "/metadata", endpoints.model_metadata, methods=["GET"]) for path in addressed),
        *(Route(path + "/edge", endpoints.edge_metadata, methods=["GET"]) for path in addressed),
        *(Route(path + "/edge/{file}", endpoints.edge_file, methods=["GET"]) for path in addressed),
        *(Route(path + "/card", endpoints.card, methods=["GET"]) for path in addressed),
        *(Route(path + ":predict", endpoints.predict, methods=["POST"]) for path in addressed),
        *(
            Route(path + ":" + verb, endpoints.classify_or_regress, methods=["POST"])
            for path in addressed
            for verb in ("classify", "regress")
        ),
        Route("/v1/faces:analyze", endpoints.faces, methods=["POST"]),
        Route("/v1/videos:analyze", endpoints.videos, methods=["POST"]),
        Route("/v1/feedback", endpoints.feedback, methods=["POST"]),
        Route("/", endpoints.page, methods=["GET"]),
        Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
        Route("/v1/panel", endpoints.panel, methods=["GET"]),
        Route(GATE_IMAGE_PATH, endpoints.panel_file_endpoint(status.GATE_IMAGE, "image/png"), methods=["GET"]),
        Route(BIAS_IMAGE_PATH, endpoints.panel_file_endpoint(status.BIAS_IMAGE, "image/png"), methods=["GET"]),
        Route(DRIFT_REPORT_PATH, endpoints.panel_file_endpoint(status.DRIFT_REPORT, "text/html"), methods=["GET"]),
        Route("/metrics", endpoints.metrics),
        Route("/monitoring/prometheus/metrics", endpoints.metrics),
        Route("/healthz", endpoints.health),
        Route("/admin/reload", endpoints.reload, methods=["POST"]),
        Route("/admin/promote", endpoints.promote, methods=["POST"]),
        Route("/admin/rollback", endpoints.rollback, methods=["POST"]),
        Route("/admin/traffic", endpoints.traffic, methods=["GET", "PUT"]),
    ]


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
    return Starlette(routes=routes(RestEndpoints(dataplane)), exception_handlers=EXCEPTION_HANDLERS)
