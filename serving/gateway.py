"""moodloop's serving gateway: one process, TF Serving's REST (uvicorn) and gRPC (grpcio) APIs.

  python -m serving.gateway                      embedded backend, REST :8501, gRPC :8500
  python -m serving.gateway --backend tfserving --tfserving-target host:8500[,host2:8500]
  (also `moodloop serve`)

Settings come from MOODLOOP_* variables (see `moodloop settings`); flags override them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time

from moodloop.core import models_config
from moodloop.core.gateway_process import UP_LINE
from moodloop.core.settings import Settings, s3_client
from serving.batching import BatchingParameters

log = logging.getLogger("moodloop.serving")


def build(settings: Settings):
    """The data plane with its backend started."""
    from serving.backends import EmbeddedBackend, TFServingBackend
    from serving.dataplane import DataPlane
    from serving.inference_log import InferenceLog
    from serving.metrics import GatewayMetrics

    models_config.ensure(settings.serving_config, settings.model_name, settings.model_base)
    inference_log = InferenceLog(
        settings.inference_log_url,
        buffer_records=settings.serving.log_buffer_records,
        flush_seconds=settings.serving.log_flush_seconds,
        s3_client_factory=lambda: s3_client(settings),
        faces_per_hour=settings.serving.live_faces_per_hour if settings.serving.keep_live_faces else 0,
    )
    metrics = GatewayMetrics()

    def on_batch(model: str, version: int, rows: int) -> None:
        metrics.batch_size.labels(model, str(version)).observe(rows)

    if settings.serving.backend == "embedded":
        backend = EmbeddedBackend(
            settings.serving_config,
            BatchingParameters.read(settings.batching_config),
            settings.serving.poll_seconds,
            on_batch,
        )
    elif settings.serving.backend == "tfserving":
        backend = TFServingBackend(
            settings.serving.tfserving_target,
            settings.serving_config,
            settings.serving.request_timeout_seconds,
            settings.serving.tfserving_health_seconds,
            settings.serving.admin_token,
        )
    else:
        raise ValueError(f"MOODLOOP_SERVING_BACKEND={settings.serving.backend!r}: use 'embedded' or 'tfserving'")
    dataplane = DataPlane(settings, backend, inference_log, metrics)
    backend.start()
    return dataplane


@dataclass
class RunningGateway:
    dataplane: object
    rest_port: int
    grpc_port: int


@contextlib.contextmanager
def serve_in_thread(settings: Settings, access_log: bool = False) -> Iterator[RunningGateway]:
    """Run the whole gateway in background threads of this process; stop and flush on exit.
    Port 0 picks free ports; the ones chosen are in the result. (uvicorn off the main thread
    installs no signal handlers: the caller decides when to stop, and the log is always flushed.)"""

    import uvicorn

    from serving.backends import freeze_long_lived_objects
    from serving.grpc_api import create_server
    from serving.rest import create_app

    dataplane = build(settings)
    server, grpc_port = create_server(dataplane, f"{settings.serving.gateway_host}:{settings.serving.grpc_port}")
    server.start()
    # uvicorn binds the port itself: a pre-bound socket handed to it answered every request
    # 40 ms late (delayed ACKs), so port 0 is resolved after start-up instead.
    config = uvicorn.Config(
        create_app(dataplane),
        host=settings.serving.gateway_host,
        port=settings.serving.rest_port,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        lifespan="off",
    )
    rest = uvicorn.Server(config)
    thread = threading.Thread(target=rest.run, daemon=True)
    thread.start()
    while not rest.started:
        if not thread.is_alive():
            server.stop(grace=0)
            raise OSError(
                f"the REST server could not start on {settings.serving.gateway_host}:{settings.serving.rest_port}"
            )
        time.sleep(0.02)
    rest_port = rest.servers[0].sockets[0].getsockname()[1]
    freeze_long_lived_objects()
    try:
        yield RunningGateway(dataplane, rest_port, grpc_port)
    finally:
        rest.should_exit = True
        thread.join(10)
        server.stop(grace=2).wait()
        dataplane.close()
        dataplane.inference_log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moodloop serve",
        description="Serve the emotion models with TF Serving's REST and gRPC APIs, a stable/canary traffic split, "
        "an inference log, face analysis for photos and videos, and Prometheus metrics.",
        epilog="Try: curl localhost:8501/v1/models/emotion ; "
        "curl -X POST --data-binary @photo.jpg 'localhost:8501/v1/faces:analyze'",
    )
    parser.add_argument("--backend", choices=["embedded", "tfserving"], help="default: $MOODLOOP_SERVING_BACKEND")
    parser.add_argument(
        "--tfserving-target", help="TF Serving's gRPC host:port, or replicas host:port,host:port (tfserving backend)"
    )
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--rest-port", type=int, help="default 8501, as TF Serving")
    parser.add_argument("--grpc-port", type=int, help="default 8500, as TF Serving")
    parser.add_argument("--model-config", type=Path, help="TF Serving's models.config (created if missing)")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    settings = Settings.from_env(
        serving_config=args.model_config,
        serving={
            "backend": args.backend,
            "tfserving_target": args.tfserving_target,
            "gateway_host": args.host,
            "rest_port": args.rest_port,
            "grpc_port": args.grpc_port,
        },
    )

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with serve_in_thread(settings, access_log=args.access_log) as running:
        log.info(
            UP_LINE,
            settings.serving.gateway_host,
            running.rest_port,
            settings.serving.gateway_host,
            running.grpc_port,
            settings.serving.backend,
            settings.serving_config,
            settings.inference_log_url,
        )
        stop.wait()
        buffered = running.dataplane.inference_log.buffered()
        log.info("shutting down: stopping the servers, flushing %d log records", buffered)
    log.info("stopped; inference log: %d records written", running.dataplane.inference_log.written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
