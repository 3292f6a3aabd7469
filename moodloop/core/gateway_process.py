"""One way to start the serving gateway as a process of its own and learn its ports: its public
entry point (`python -m serving.gateway`, what `moodloop serve` and the local stack run), port 0
for any free port, and the ports it bound read from its start-up line. No port is picked by the
parent and bound later by the child, so two starts cannot race for one port.

The InfraValidator, the drift drill, the tests and the benchmarks use it. It lives in the shared
core and starts the gateway by its command line: a stage that needs a model server (the
InfraValidator) imports nothing of the serving stage, as TFX's InfraValidator starts TF Serving.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# The gateway's start-up line (serving/gateway.py main() prints it), which names the ports it bound.
UP_LINE = "gateway up: REST http://%s:%d  gRPC %s:%d  backend %s  models.config %s  inference log %s"
_UP_PORTS = re.compile(r"gateway up: REST http://[^\s:]+:(\d+)\s+gRPC [^\s:]+:(\d+)")
GATEWAY_COMMAND = ("-m", "serving.gateway")  # after an interpreter of the pipeline env


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    rest_port: int = 0
    grpc_port: int = 0
    # its latest output, read by a thread so the pipe never fills; bounded for a long-lived gateway
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    reader: threading.Thread | None = None

    def log_tail(self, count: int = 5) -> str:
        return " | ".join(line.strip() for line in list(self.lines)[-count:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the gateway flushes its inference log), SIGKILL after `timeout` s; -> exit code."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_process(
    env: dict[str, str],
    command: list[str] | None = None,
    args: list[str] | None = None,
    timeout: float = 120.0,
    cwd: str | Path | None = None,
) -> GatewayProcess:
    """Start `command` (default: this interpreter with `-m serving.gateway`), then `args`, in `cwd`
    and return once it has printed its start-up line; RuntimeError with its last lines if it exits
    or stays silent for `timeout` s (then it is killed)."""
    command = [*(command or [sys.executable, *GATEWAY_COMMAND]), *(args or [])]
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gateway = GatewayProcess(process)
    up = threading.Event()

    def read() -> None:
        for line in process.stdout:
            gateway.lines.append(line)
            if not up.is_set() and (match := _UP_PORTS.search(line)):
                gateway.rest_port, gateway.grpc_port = int(match[1]), int(match[2])
                up.set()
        up.set()  # the output ended: the process is gone

    gateway.reader = threading.Thread(target=read, daemon=True, name="gateway-output")
    gateway.reader.start()
    if up.wait(timeout) and gateway.rest_port:
        return gateway
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    code = process.wait()
    gateway.reader.join(5)
    raise RuntimeError(f"the gateway did not start (exit {code}): {gateway.log_tail()}")
