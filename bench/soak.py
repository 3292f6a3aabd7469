"""Soak: the gateway at about half of its peak for a long while (10 minutes by default), then a
clean stop. Stops by itself; loopback only.

1. The peak: wrk, one face per request, 8 connections, 10 s after 3 s of warm-up (as
   bench/serving_load.py measures it).
2. The soak: the same wrk with a pause between requests so that the rate is about half of the peak,
   for `--minutes`; the gateway's resident memory is sampled every 10 s.
3. SIGTERM: the gateway flushes its inference log; then the log is read back.
Passes (exit 0) when: no request failed; resident memory grew by at most 5 % from the first
minute's level to the end; and every answered request is in the inference log or counted as
dropped (`moodloop_inference_log_dropped`), nothing else lost.

  .venv/pipeline/bin/python bench/soak.py [--minutes 10] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.gateway_process import start_gateway
from bench.serving_load import PREDICT_PATH, rest_body, wrk
from bench.serving_throughput import encoded_faces, model_base_with_version_1
from moodloop.core.log_records import read_log


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(rest_port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{rest_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model-dir", type=Path, help="a pushed SavedModel version folder (default: a fresh one)")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moodloop-soak-"))
    model_base = model_base_with_version_1(work, args.model_dir, "small")
    body = rest_body(encoded_faces(1))
    home = work / "home"
    gateway, rest_port, _ = start_gateway(model_base, home)
    url = f"http://127.0.0.1:{rest_port}{PREDICT_PATH}"
    c = args.connections
    warm = wrk(url, body, c, 3, gateway.pid)
    peak = wrk(url, body, c, 10, gateway.pid)
    print(f"peak: {peak['rate']:.0f} req/s (p99 {peak['p99_ms']:.1f} ms)")
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(10):
            samples.append((time.monotonic() - started, resident_mb(gateway.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    soak = wrk(url, body, c, args.minutes * 60, gateway.pid, delay_ms=1000 * c / peak["rate"])
    stop.set()
    sampler.join()
    dropped = metric(rest_port, "moodloop_inference_log_dropped")
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(timeout=120)
    answered = warm["requests"] + peak["requests"] + soak["requests"]
    logged = read_log(home / "inference_log").num_rows
    first_minute = [mb for t, mb in samples if t <= 60] or [samples[0][1]]
    growth = samples[-1][1] / max(first_minute) - 1
    accounted = logged + dropped
    print(
        f"soak: {args.minutes:g} min at {soak['rate']:.0f} req/s ({100 * soak['rate'] / peak['rate']:.0f}% of peak), "
        f"p50 {soak['p50_ms']:.1f} ms, p99 {soak['p99_ms']:.1f} ms, errors {soak['errors']}, "
        f"client CPU {100 * soak['client_cpu']:.0f}%, server CPU {100 * soak['server_cpu']:.0f}%"
    )
    print(
        f"memory: {max(first_minute):.0f} MB after the first minute, {samples[-1][1]:.0f} MB at the end "
        f"({100 * growth:+.1f} %, goal <= +5 %); samples: " + ", ".join(f"{mb:.0f}" for _, mb in samples[::6])
    )
    print(
        f"inference log: {answered} requests answered (warm-up, peak run and soak), {logged} logged, {dropped:.0f} "
        f"counted as dropped; goal: every answered request accounted for"
    )
    # wrk counts the requests it completed; ones it sent at its very end may be answered after it
    # stopped counting (one per connection at most, in each of its three runs): logged, not counted.
    ok = soak["errors"] == 0 and growth <= 0.05 and 0 <= accounted - answered <= 3 * c
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
