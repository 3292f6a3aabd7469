"""The local stack's services as one table, and the supervisor that runs them.

Each `Service` is a command, its environment, its log file and an optional readiness check; the
`Supervisor` (one process, `python -m moodloop.local.stack supervise`) starts them in table order,
each once the one before it is ready where that matters, and then watches them: a service that
exits while the stack is up is started again after a pause that doubles each time (1 s, 2 s, 4 s
...), at most MAX_RESTARTS times, and the count shows in `make status`. This is what systemd or
docker-compose's `restart: on-failure` would do for the same processes: a scheduler that dies on
SQLite's "database is locked" comes back instead of leaving a stack that runs nothing.

The state (each service's pid, restarts and last exit codes) is written atomically to a JSON
file, which `start`, `status`, `stop` and the tests read. SIGTERM stops every service (SIGTERM to
its process group, SIGKILL after STOP_TIMEOUT) before the supervisor exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moodloop.core.files import atomic_write_text

log = logging.getLogger(__name__)

MAX_RESTARTS = 5  # per service and stack start: past it the service stays down and status says so
STOP_TIMEOUT = 25.0  # seconds a service has to stop after SIGTERM before SIGKILL
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    ready: Callable[[], bool] | None = None  # the next service starts only once this is true
    ready_timeout: float = 120.0
    pid_file: Path | None = None  # a pid file the service refuses to start over (Celery's): removed first
    about: str = ""  # what `start` prints beside it (an address, a role)
    # A step that runs to its end before the next service starts (docker-compose's
    # `service_completed_successfully`): done when it exits 0, run again after a pause if not.
    oneshot: bool = False
    stop_signal: int = signal.SIGTERM  # what asks it to stop (PostgreSQL: SIGINT, its fast shutdown)


@dataclass
class _Running:
    service: Service
    process: subprocess.Popen
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    restart_at: float | None = None  # when a crashed service is due to start again
    given_up: bool = False  # crashed past MAX_RESTARTS: left down
    done: bool = False  # a oneshot service that exited 0


def read_state(state_file: Path) -> dict[str, dict]:
    """{name: {"pid", "restarts", "exit_codes", "state"}} as the supervisor last wrote it ({} before)."""
    try:
        return json.loads(state_file.read_text())
    except (OSError, ValueError):
        return {}


class Supervisor:
    def __init__(self, services: list[Service], logs: Path, state_file: Path) -> None:
        self.services = services
        self.logs = logs
        self.state_file = state_file
        self.running: dict[str, _Running] = {}
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_state()
        try:
            for service in self.services:
                if self.stopping:
                    break
                self.running[service.name] = _Running(service, self._spawn(service))
                self._write_state()
                if service.oneshot:
                    self._run_to_end(self.running[service.name])
                elif service.ready is not None:
                    self._wait_ready(service)
            while not self.stopping:
                self._watch()
                time.sleep(0.5)
        finally:
            self._stop_all()
        return 0

    def _spawn(self, service: Service) -> subprocess.Popen:
        if service.pid_file is not None:
            service.pid_file.unlink(missing_ok=True)  # left by a killed process, it would stop the new one
        with open(self.logs / f"{service.name}.log", "ab") as output:  # the child keeps its own copy
            process = subprocess.Popen(
                service.command,
                env=service.env,
                cwd=service.cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one, with its children
            )
        log.info("%s started (pid %d)", service.name, process.pid)
        return process

    def _wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + service.ready_timeout
        while not self.stopping and time.monotonic() < deadline:
            if self.running[service.name].process.poll() is not None:
                return  # crashed while starting: the watch loop restarts it
            with contextlib.suppress(Exception):  # not answering yet is what is being waited out
                if service.ready():
                    return
            time.sleep(0.5)
        log.warning("%s not ready after %.0f s; starting the next services anyway", service.name, service.ready_timeout)

    def _run_to_end(self, running: _Running) -> None:
        """Wait for a oneshot service to exit; one that fails runs again after the same pauses as a
        crashed service, and past MAX_RESTARTS the stack goes on without it (status: given up)."""
        while not self.stopping:
            code = running.process.poll()
            if code is None:
                time.sleep(0.2)
                continue
            if code == 0:
                running.exit_codes = [*running.exit_codes[-4:], code]
                running.done = True
                break
            pause = self._pause_after(running, code)
            if pause is None:
                break
            time.sleep(pause)
            running.restarts += 1
            running.process = self._spawn(running.service)
            self._write_state()
        self._write_state()

    def _pause_after(self, running: _Running, code: int) -> float | None:
        """Record an exit that should not have happened (a crash, a failed oneshot step). -> the
        pause before it runs again (1, 2, 4 ... s), or None past MAX_RESTARTS: left down."""
        running.exit_codes = [*running.exit_codes[-4:], code]
        name = running.service.name
        if running.restarts >= MAX_RESTARTS:
            log.error("%s exited (%d) after %d restarts: left down", name, code, running.restarts)
            running.given_up = True
            return None
        pause = 2.0**running.restarts
        log.warning("%s exited (%d); starting it again in %.0f s", name, code, pause)
        return pause

    def _watch(self) -> None:
        now = time.monotonic()
        for running in self.running.values():
            if running.restart_at is not None:
                if now >= running.restart_at:
                    running.restart_at = None
                    running.restarts += 1
                    running.process = self._spawn(running.service)
                    self._write_state()
                continue
            code = running.process.poll()
            if code is None or running.given_up or running.service.oneshot:
                continue
            pause = self._pause_after(running, code)
            if pause is not None:
                running.restart_at = now + pause
            self._write_state()

    def _write_state(self) -> None:
        state = {SUPERVISOR: {"pid": os.getpid(), "restarts": 0, "exit_codes": [], "state": "running"}}
        for name, running in self.running.items():
            down = running.restart_at is not None or running.process.poll() is not None
            state[name] = {
                "pid": running.process.pid,
                "restarts": running.restarts,
                "exit_codes": running.exit_codes,
                "state": (
                    "done"
                    if running.done
                    else "given up"
                    if running.given_up
                    else "restarting"
                    if running.restart_at is not None
                    else "down"
                    if down
                    else "running"
                ),
            }
        atomic_write_text(self.state_file, json.dumps(state, indent=1))

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        """Stop every service's process group (SIGTERM, or its own stop signal), in reverse start
        order, then SIGKILL what is left."""
        live = [r for r in reversed(self.running.values()) if r.process.poll() is None]
        for running in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, running.service.stop_signal)
        deadline = time.monotonic() + STOP_TIMEOUT
        for running in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.process.wait(max(0.1, deadline - time.monotonic()))
        for running in live:
            if running.process.poll() is None:
                log.warning("%s ignored SIGTERM for %.0f s: killed", running.service.name, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait()
