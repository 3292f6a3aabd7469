"""The gateway in a process of its own, as the benchmarks measure it (`python -m serving.gateway`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from moodloop.core.gateway_process import start_process

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_gateway(model_base: Path, home: Path, **settings: str) -> tuple[subprocess.Popen, int, int]:
    """Start it on free ports with the embedded backend; -> (process, REST port, gRPC port).
    `settings` are extra MOODLOOP_* variables, e.g. MOODLOOP_FACE_DETECTOR="haar"."""
    env = {
        **os.environ,
        "MOODLOOP_HOME": str(home),
        "MOODLOOP_MODEL_BASE": str(model_base),
        "MOODLOOP_REST_PORT": "0",
        "MOODLOOP_GRPC_PORT": "0",
        **settings,
    }
    gateway = start_process(env)
    return gateway.process, gateway.rest_port, gateway.grpc_port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
