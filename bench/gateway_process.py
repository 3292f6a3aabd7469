"""The gateway in a process of its own, as the benchmarks measure it (`python -m serving.gateway`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.gateway"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if match := re.search(r"REST http://[\d.]+:(\d+)\s+gRPC [\d.]+:(\d+)", line):
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # drain
            return process, int(match[1]), int(match[2])
    raise RuntimeError("the gateway did not start")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
