"""Benchmark: the gateway under C load generators (the client is not the bottleneck), as ratios to
two baselines measured in the same run.

Baselines:
- the limit: the same SavedModel called in-process through `serving_default` on batches of 64
  encoded faces (no server, no network, no log): faces/s;
- a plain per-request server of that SavedModel (bench/plain_server.py: Starlette + the signature,
  no batching, no checks, no log, no metrics), under the same wrk at one face per request.
Measured on the gateway (its own process, embedded backend, dynamic batching, inference log on):
- REST one face per request and 16 faces per request, with `wrk` (Debian's package);
- gRPC one face per request, with `h2load` (Debian's nghttp2-client), TF Serving's Predict;
- p50 / p99 latency, and p99 at about half of the peak rate (wrk pausing between requests);
- the CPU share of the load generator and of the server (user + system seconds / wall seconds).
Each figure is printed next to its goal (issue 15).

  .venv/pipeline/bin/python bench/serving_load.py [--model-dir DIR] [--seconds 10]

Without wrk or h2load (`apt-get install wrk nghttp2-client`; `make setup` does it as root) it says
so and measures what it can.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.gateway_process import process_cpu_seconds, start_gateway
from bench.serving_throughput import baseline, encoded_faces, model_base_with_version_1
from moodloop.core.contracts import METRIC_ERRORS

REPO = Path(__file__).resolve().parent.parent
PREDICT_PATH = "/v1/models/emotion:predict"
GRPC_PATH = "/tensorflow.serving.PredictionService/Predict"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def _run_measured(command: list[str], server_pid: int) -> tuple[str, float, float, float]:
    """Run a load generator to its end; -> (its output, wall seconds, its CPU seconds, the server's)."""
    server_before = process_cpu_seconds(server_pid)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's own CPU time
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{output}")
    return output, wall, usage.ru_utime + usage.ru_stime, process_cpu_seconds(server_pid) - server_before


WRK_SCRIPT = """
local file = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
{delay}
done = function(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status, failed, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, body: bytes, connections: int, seconds: float, server_pid: int, delay_ms: float = 0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="moodloop-wrk-"))
    (work / "body.json").write_bytes(body)
    delay = f"function delay() return {delay_ms:.3f} end" if delay_ms else ""
    (work / "post.lua").write_text(WRK_SCRIPT.format(body=work / "body.json", delay=delay))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(work / "post.lua"), url]
    output, wall, client_cpu, server_cpu = _run_measured(command, server_pid)
    shutil.rmtree(work)
    requests, duration_us, bad_status, failed, p50, p99 = map(int, output.split("RESULT")[1].split())
    return {
        "requests": requests,
        "rate": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": bad_status + failed,
        "client_cpu": client_cpu / wall,
        "server_cpu": server_cpu / wall,
    }


def grpc_body(faces: list[bytes]) -> bytes:
    """One gRPC message (length-prefixed PredictRequest), as h2load posts it."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "emotion"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(faces))
    message = request.SerializeToString()
    return struct.pack(">?I", False, len(message)) + message


def h2load(port: int, body: bytes, connections: int, streams: int, seconds: float, server_pid: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="moodloop-h2load-"))
    (work / "request.bin").write_bytes(body)
    log = work / "requests.tsv"
    command = [
        "h2load",
        f"-D{seconds:.0f}",
        "--warm-up-time=1",
        f"-c{connections}",
        f"-m{streams}",
        "-t1",
        f"--log-file={log}",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(work / "request.bin"),
        f"http://127.0.0.1:{port}{GRPC_PATH}",
    ]
    output, wall, client_cpu, server_cpu = _run_measured(command, server_pid)
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)  # start (us since epoch), HTTP status, duration (us)
    shutil.rmtree(work)
    rows = rows[rows[:, 1] != 0]  # status 0: streams still open when the duration ended, not answers
    span = (rows[:, 0].max() + rows[:, 2][rows[:, 0].argmax()] - rows[:, 0].min()) / 1e6
    return {
        "rate": len(rows) / span,
        "p50_ms": float(np.percentile(rows[:, 2], 50)) / 1000,  # h2load logs the measured period only
        "p99_ms": float(np.percentile(rows[:, 2], 99)) / 1000,
        "errors": int((rows[:, 1] != 200).sum()),
        "client_cpu": client_cpu / wall,
        "server_cpu": server_cpu / wall,
        "h2load": next((line.strip() for line in output.splitlines() if line.startswith("requests:")), ""),
    }


def grpc_errors(rest_port: int) -> float:
    """gRPC answers failed inside HTTP/2 200s are counted by the gateway's Prometheus counters."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{METRIC_ERRORS}_total{{") and 'api="grpc"' in line
    )


def rest_body(faces: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(face).decode()} for face in faces]}).encode()


def show(name: str, result: dict, faces_per_request: int, limit: float, goal: str, extra: str = "") -> None:
    faces = result["rate"] * faces_per_request
    print(
        f"{name:<34} {result['rate']:>8.0f} req/s {faces:>8.0f} faces/s  p50 {result['p50_ms']:>6.1f} ms  "
        f"p99 {result['p99_ms']:>6.1f} ms  errors {result['errors']:>3}  "
        f"client CPU {100 * result['client_cpu']:>4.0f}%  server CPU {100 * result['server_cpu']:>4.0f}%  "
        f"{faces / limit:.2f}x the limit (goal {goal}){extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a pushed SavedModel version folder (default: a fresh one)")
    parser.add_argument("--model-size", default="small", help="size of the fresh model (default small)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load run")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections of the load generators")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "h2load") if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install wrk nghttp2-client); measuring without them")

    work = Path(tempfile.mkdtemp(prefix="moodloop-bench-load-"))
    model_base = model_base_with_version_1(work, args.model_dir, args.model_size)
    faces = encoded_faces(64)
    limit = baseline(model_base / "1", faces, 64, 5.0)
    print(f"limit: the SavedModel in-process, serving_default on batches of 64 faces: {limit:.0f} faces/s")
    one, sixteen = rest_body(faces[:1]), rest_body(faces[:16])
    c = args.connections
    results: dict[str, dict] = {}

    if "wrk" not in missing:
        port = free_port()
        plain = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "plain_server.py"), str(model_base / "1"), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            url = f"http://127.0.0.1:{port}{PREDICT_PATH}"
            wrk(url, one, c, 2, plain.pid)  # warm
            results["plain"] = wrk(url, one, c, args.seconds, plain.pid)
            show("plain server, REST 1 face/request", results["plain"], 1, limit, "baseline")
        finally:
            plain.terminate()
            plain.wait(timeout=30)

    gateway, rest_port, grpc_port = start_gateway(model_base, work / "home")
    try:
        url = f"http://127.0.0.1:{rest_port}{PREDICT_PATH}"
        if "wrk" not in missing:
            wrk(url, one, c, 2, gateway.pid)  # warm
            results["rest1"] = wrk(url, one, c, args.seconds, gateway.pid)
            vs_plain = results["rest1"]["rate"] / results["plain"]["rate"]
            show(
                "gateway, REST 1 face/request",
                results["rest1"],
                1,
                limit,
                ">= 0.5x",
                f"; {vs_plain:.2f}x the plain server (goal >= 2x)",
            )
            results["rest16"] = wrk(url, sixteen, c, args.seconds, gateway.pid)
            show("gateway, REST 16 faces/request", results["rest16"], 16, limit, ">= 0.9x")
            # About half of the peak: each connection pauses between requests.
            pause_ms = 1000 * c / results["rest1"]["rate"]
            results["half"] = wrk(url, one, c, args.seconds, gateway.pid, delay_ms=pause_ms)
            share = results["half"]["rate"] / results["rest1"]["rate"]
            show(
                f"gateway, REST 1 face, {100 * share:.0f}% of peak",
                results["half"],
                1,
                limit,
                "p99 <= 25 ms at half of peak",
            )
        if "h2load" not in missing:
            errors_before = grpc_errors(rest_port)
            body = grpc_body(faces[:1])
            results["grpc1"] = h2load(grpc_port, body, 2, c // 2, args.seconds, gateway.pid)
            results["grpc1"]["errors"] += int(grpc_errors(rest_port) - errors_before)
            show(
                "gateway, gRPC 1 face/request",
                results["grpc1"],
                1,
                limit,
                ">= 0.5x",
                f"  [{results['grpc1']['h2load']}]",
            )
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(
        "CPU shares are of one core (100% = one core busy); this machine has "
        f"{os.cpu_count()} cores, shared by the load generator and the server."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
