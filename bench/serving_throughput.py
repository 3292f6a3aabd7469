"""Benchmark: the gateway's REST and gRPC throughput and latency against the raw model.

Baseline (the limit): the same SavedModel called in-process through its `serving_default`
signature on batches of `max_batch_size` encoded faces, no server, no network, no logging.
Measured: one face per request, sent by N concurrent clients to the gateway (a separate process,
embedded backend, dynamic batching and inference log on) over REST (JSON + b64) and gRPC
(tensorflow-serving-api's stub). Prints requests/s, p50/p99 latency, the energy per 1,000
requests (codecarbon, the whole machine: client and gateway) and the ratio gateway throughput /
baseline throughput at each concurrency.

  .venv/pipeline/bin/python bench/serving_throughput.py [--model-dir DIR] [--concurrency 1 8 32]

Client and server share this machine's cores, so the ratios are a floor on what a separate
client machine would see.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from bench.gateway_process import start_gateway
from components.energy import measured
from data import synthetic
from moodloop.core.settings import Settings
from serving.batching import BatchingParameters

REPO = Path(__file__).resolve().parent.parent


def encoded_faces(n: int) -> list[bytes]:
    pixels, _ = synthetic.generate_arrays(n, seed=42)
    out = []
    for face in pixels:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def model_base_with_version_1(work: Path, model_dir: Path | None, model_size: str) -> Path:
    """<work>/models/emotion/1: the given SavedModel (linked), or a fresh untrained one of `model_size`."""
    model_base = work / "models" / "emotion"
    model_base.mkdir(parents=True)
    if model_dir:
        (model_base / "1").symlink_to(model_dir.resolve(), target_is_directory=True)
    else:
        from components.untrained_model import export_version

        export_version(model_base, 1, size=model_size)
    return model_base


def baseline(model_dir: Path, faces: list[bytes], batch: int, seconds: float) -> float:
    import tensorflow as tf

    predict = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    chunk = tf.constant((faces * (batch // len(faces) + 1))[:batch])
    predict(images=chunk)  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(images=chunk)["probabilities"].numpy()
        done += batch
    return done / (time.perf_counter() - started)


def load(send, clients: int, requests_per_client: int) -> tuple[float, list[float], int]:
    """Run `clients` threads, each sending `requests_per_client` requests; -> (req/s, latencies, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        own, failed = [], 0
        for i in range(requests_per_client):
            started = time.perf_counter()
            try:
                send(index, i)
                own.append(time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - counted, printed
                failed += 1
        with lock:
            latencies.extend(own)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - started), latencies, errors[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a pushed SavedModel version folder (default: a fresh one)")
    parser.add_argument("--model-size", default="small", help="size of the fresh model (default small)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level and API")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the baseline measurement")
    args = parser.parse_args()

    import grpc
    import httpx
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix="moodloop-bench-serving-"))
    model_base = model_base_with_version_1(work, args.model_dir, args.model_size)
    faces = encoded_faces(256)
    batch = BatchingParameters.read(REPO / "serving" / "config" / "batching.config").max_batch_size

    country = Settings.from_env().carbon_country
    limit = baseline(model_base / "1", faces, batch, args.seconds)
    single = baseline(model_base / "1", faces, 1, args.seconds / 2)
    print(f"baseline: raw in-process serving_default, batches of {batch}: {limit:8.1f} faces/s")
    print(f"          (raw in-process, one face per call:            {single:8.1f} faces/s)")

    process, rest_port, grpc_port = start_gateway(model_base, work / "home")
    try:
        payloads = [{"instances": [{"b64": base64.b64encode(f).decode()}]} for f in faces]
        http_clients = threading.local()

        def rest(client: int, i: int) -> None:
            if not hasattr(http_clients, "c"):
                http_clients.c = httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=60)
            response = http_clients.c.post(
                "/v1/models/emotion:predict",
                json=payloads[(client * 31 + i) % len(faces)],
                headers={"x-client-id": f"bench-{client}"},
            )
            response.raise_for_status()

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        requests = []
        for face in faces:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "emotion"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([face]))
            requests.append(request)

        def grpc_call(client: int, i: int) -> None:
            stub.Predict(requests[(client * 31 + i) % len(faces)], timeout=60)

        for _ in range(20):  # warm both paths
            rest(0, 0)
            grpc_call(0, 0)
        header = f"{'api':<5} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'J/1k':>7}"
        print(f"\n{header}  ratio to baseline")
        for api, send in (("REST", rest), ("gRPC", grpc_call)):
            for clients in args.concurrency:
                per_client = max(1, args.requests // clients)
                with measured(country, whole_machine=True) as energy:
                    throughput, latencies, errors = load(send, clients, per_client)
                p50, p99 = (np.percentile(latencies, q) * 1000 for q in (50, 99))
                per_thousand = energy.joules / max(1, len(latencies)) * 1000
                print(
                    f"{api:<5} {clients:>7} {throughput:>8.1f} {p50:>8.1f} {p99:>8.1f} {errors:>6} "
                    f"{per_thousand:>7.0f}  {throughput / limit:.2f}x  "
                    f"(gateway {throughput:.0f} req/s / raw batched {limit:.0f} faces/s)"
                )
        print(f"J/1k: joules per 1,000 answered requests, the whole machine (client and gateway): {energy.method}")
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
