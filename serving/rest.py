"""The REST surface: TF Serving's REST API, plus face analysis, feedback, metrics and admin.

TF Serving's paths and shapes:
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   {"instances": ...} | {"inputs": ...}
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
Errors are {"error": "..."} with TF Serving's HTTP codes.
moodloop's own:
  POST /v1/faces:analyze    a photo (body or multipart "file") -> faces, boxes, emotions
  POST /v1/videos:analyze   a video -> an emotions timeline
  POST /v1/feedback         {"request_id": ..., "label": ..., "instance": 0}
  GET  /metrics             Prometheus (also /monitoring/prometheus/metrics, TF Serving's path)
  POST /admin/reload | /admin/promote | /admin/rollback, PUT /admin/traffic  (Bearer token)
Every prediction answers with an `x-request-id` header: the id feedback refers to.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from typing import Any

from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.backends import ServingError
from serving.faces import BadMediaError, analyze_photo, analyze_video
from serving.rest_codec import HTTP_STATUS, parse_predict_request, predict_response
from serving.service import Call, Gateway

MODEL_PATH = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[a-z]+))?$"
)


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=HTTP_STATUS.get(code, 500))


class PayloadTooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _client_id(request: Request) -> str | None:
    return request.headers.get("x-client-id") or None


def create_app(gateway: Gateway) -> Starlette:
    settings = gateway.settings
    limit = settings.max_upload_bytes

    async def in_thread(function, *args):
        try:
            return await asyncio.wait_for(run_in_threadpool(function, *args), settings.request_timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError(
                "DEADLINE_EXCEEDED", f"Deadline Exceeded ({settings.request_timeout_seconds:g} s)"
            ) from None

    async def models(request: Request) -> Response:
        match = MODEL_PATH.match(request.path_params["path"])
        if not match:
            return _error("NOT_FOUND", f"Malformed request: {request.method} {request.url.path}")
        name, label = match["name"], match["label"]
        version = int(match["version"]) if match["version"] is not None else None
        try:
            if request.method == "GET" and not match["verb"]:
                if match["metadata"]:
                    return await in_thread(_metadata, name, version, label)
                states = await in_thread(gateway.backend.status, name, version, label)
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
            if request.method == "POST" and match["verb"] == "predict" and not match["metadata"]:
                return await _predict(request, name, version, label)
            if request.method == "POST" and match["verb"] in ("classify", "regress"):
                return _error("UNIMPLEMENTED", f"{match['verb']} is not offered: the emotion models use predict")
            return _error("NOT_FOUND", f"Malformed request: {request.method} {request.url.path}")
        except ServingError as error:
            return _error(error.code, error.message)
        except PayloadTooLarge as error:
            return JSONResponse({"error": str(error)}, status_code=413)

    def _metadata(name: str, version: int | None, label: str | None) -> Response:
        from tensorflow_serving.apis import get_model_metadata_pb2

        served, signature_defs = gateway.backend.signature_defs(name, version, label)
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

    async def _predict(request: Request, name: str, version: int | None, label: str | None) -> Response:
        raw = await _body(request, limit)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {error}") from None
        call = Call("rest", name, version, label, "", _client_id(request), gateway.new_request_id())
        signature_name = body.get("signature_name", "") if isinstance(body, dict) else ""

        def run() -> dict[str, Any]:
            _, signature_defs = gateway.backend.signature_defs(name, version, label)
            signature = signature_defs.get(signature_name or "serving_default")
            if signature is None:
                key = signature_name or "serving_default"
                raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
            input_names = sorted(signature.inputs)
            signature_key, inputs, style = parse_predict_request(body, input_names)
            pinned = Call(call.api, name, version, label, signature_key, call.client_id, call.request_id)
            _, outputs = gateway.predict(pinned, inputs)
            return predict_response(outputs, style)

        result = await in_thread(run)
        return JSONResponse(result, headers={"x-request-id": call.request_id})

    async def _upload(request: Request) -> bytes:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
            async with request.form(max_part_size=limit) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise BadMediaError("multipart upload needs a 'file' field")
                return await upload.read()
        return await _body(request, limit)

    def _flag(request: Request, name: str) -> bool:
        return request.query_params.get(name, "").lower() in ("1", "true", "yes")

    async def _analyze(request: Request, api: str, media_type: str, analyze) -> Response:
        """Shared by photos and videos: upload, analyze in a worker thread, JSON or annotated media."""
        call = Call(api, settings.model_name, None, None, "", _client_id(request), gateway.new_request_id())
        try:
            data = await _upload(request)
            result, media = await analyze(data, gateway.classifier(call), _flag(request, "annotate"))
        except PayloadTooLarge as error:
            return JSONResponse({"error": str(error)}, status_code=413)
        except (BadMediaError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except asyncio.TimeoutError:
            return _error("DEADLINE_EXCEEDED", f"{api} analysis took too long; send something smaller")
        except ServingError as error:
            return _error(error.code, error.message)
        headers = {"x-request-id": call.request_id}
        if media is not None:
            return Response(media, media_type=media_type, headers=headers)
        return JSONResponse({"request_id": call.request_id, **result}, headers=headers)

    async def faces(request: Request) -> Response:
        async def analyze(data, classify, annotate):
            def run():  # gateway.detector is per thread: read it on the worker thread that detects
                return analyze_photo(
                    data, gateway.detector, classify, settings.max_image_pixels, annotate, settings.min_confidence
                )

            return await in_thread(run)

        return await _analyze(request, "faces", "image/jpeg", analyze)

    async def videos(request: Request) -> Response:
        async def analyze(data, classify, annotate):
            every = float(request.query_params.get("every", "0.5"))
            if not 0.04 <= every <= 60:
                raise BadMediaError("'every' (seconds between sampled frames) must be between 0.04 and 60")

            def run():  # gateway.detector is per thread: read it on the worker thread that detects
                detector, limit = gateway.detector, settings.max_image_pixels
                return analyze_video(
                    data, detector, classify, limit, every, 600, annotate, min_confidence=settings.min_confidence
                )

            work = run_in_threadpool(run)
            return await asyncio.wait_for(work, timeout=max(60.0, settings.request_timeout_seconds))

        return await _analyze(request, "videos", "video/mp4", analyze)

    async def feedback(request: Request) -> Response:
        try:
            body = json.loads(await _body(request, 64 * 1024))
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "body must be a JSON object")
            record = gateway.feedback(body.get("request_id", ""), body.get("label", ""), int(body.get("instance", 0)))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as error:
            return _error("INVALID_ARGUMENT", f"feedback: {error}")
        except PayloadTooLarge as error:
            return JSONResponse({"error": str(error)}, status_code=413)
        except ServingError as error:
            return _error(error.code, error.message)
        return JSONResponse({"request_id": record.request_id, "instance": record.instance, "label": record.label}, 202)

    async def metrics(request: Request) -> Response:
        gateway.refresh_log_metrics()
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        labels = gateway.backend.labels(settings.model_name)
        try:
            states = gateway.backend.status(settings.model_name, None, None)
        except ServingError as error:
            return JSONResponse({"ready": False, "reason": error.message}, status_code=503)
        available = [s.version for s in states if s.state == "AVAILABLE"]
        body = {
            "ready": bool(available),
            "model": settings.model_name,
            "available_versions": available,
            "labels": labels,
        }
        return JSONResponse(body, status_code=200 if available else 503)

    def _authorised(request: Request) -> Response | None:
        if not settings.admin_token:
            return JSONResponse({"error": "admin endpoints are disabled: set MOODLOOP_ADMIN_TOKEN"}, status_code=403)
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), settings.admin_token.encode()):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return None

    async def admin(request: Request) -> Response:
        denied = _authorised(request)
        if denied:
            return denied
        action = request.path_params["action"]
        model = request.query_params.get("model", settings.model_name)
        try:
            if action == "reload" and request.method == "POST":
                await run_in_threadpool(gateway.reload)
                return JSONResponse({"reloaded": True, "labels": gateway.backend.labels(model)})
            if action == "promote" and request.method == "POST":
                version = await run_in_threadpool(gateway.promote, model)
                await run_in_threadpool(gateway.reload)
                return JSONResponse({"promoted": version, "labels": gateway.backend.labels(model)})
            if action == "rollback" and request.method == "POST":
                version = await run_in_threadpool(gateway.rollback, model)
                await run_in_threadpool(gateway.reload)
                return JSONResponse({"rolled_back": version, "labels": gateway.backend.labels(model)})
            if action == "traffic" and request.method in ("GET", "PUT"):
                if request.method == "PUT":
                    gateway.traffic.set(json.loads(await _body(request, 4096))["canary_share"])
                return JSONResponse({"canary_share": gateway.traffic.share()})
        except (LookupError, ValueError, TypeError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"error": f"no admin action {request.method} {action}"}, status_code=404)

    return Starlette(
        routes=[
            Route("/v1/models/{path:path}", models, methods=["GET", "POST"]),
            Route("/v1/faces:analyze", faces, methods=["POST"]),
            Route("/v1/videos:analyze", videos, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/monitoring/prometheus/metrics", metrics),
            Route("/healthz", health),
            Route("/admin/{action}", admin, methods=["GET", "POST", "PUT"]),
        ]
    )
