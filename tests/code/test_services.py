"""The local stack's supervisor (moodloop/local/services.py), on tiny commands: services start in
table order once the one before is ready, a crashed one is started again with a growing pause and
a counted limit, and SIGTERM stops them all (issue 29: crashed services were not restarted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moodloop.local.services import read_state

SUPERVISE = """
import sys
from pathlib import Path
from moodloop.local import services
from moodloop.local.services import Service, Supervisor
services.MAX_RESTARTS = 2
folder = Path(sys.argv[1])
table = [
    Service("steady", ["sleep", "600"], {}, ready=lambda: (folder / "logs" / "steady.log").exists()),
    Service("crashing", ["sh", "-c", "echo started >> " + str(folder / "starts") + "; exit 3"], {}),
]
Supervisor(table, folder / "logs", folder / "services.json").run()
"""


def _wait_for(condition, timeout: float = 60.0):  # generous: CI may share the CPU with a hog
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


def test_a_crashed_service_is_started_again_up_to_the_limit_and_sigterm_stops_all(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(tmp_path)], env=env)
    try:
        state_file = tmp_path / "services.json"
        # 1 start + 2 restarts after 1 s and 2 s, then left down, and said so once
        _wait_for(lambda: read_state(state_file).get("crashing", {}).get("state") == "given up")
        state = read_state(state_file)
        assert (tmp_path / "starts").read_text().count("started") == 3
        assert state["crashing"]["restarts"] == 2 and state["crashing"]["exit_codes"] == [3, 3, 3]
        assert state["steady"]["state"] == "running" and state["steady"]["restarts"] == 0
        steady = state["steady"]["pid"]
        time.sleep(1.5)  # still left down: no fourth start
        assert (tmp_path / "starts").read_text().count("started") == 3
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(steady, 0)  # the steady service was stopped with it (and reaped)
    finally:
        supervisor.kill()
    assert json.loads(state_file.read_text())["supervisor"]["pid"] == supervisor.pid


ONESHOT = """
import signal, sys
from pathlib import Path
from moodloop.local.services import Service, Supervisor
folder = Path(sys.argv[1])
count = folder / "count"
table = [
    # fails at its first run, succeeds at its second (after a pause of 1 s)
    Service("prepare", ["sh", "-c", f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; "
            '[ "$n" -ge 1 ]'], {}, oneshot=True),
    # what it saw of the step when it started; stopped by SIGINT, as PostgreSQL is (its fast shutdown)
    Service("after", ["sh", "-c", f"cat {count} > {folder / 'seen'}; trap 'echo INT > {folder / 'got'}; exit 0' INT; "
            "while :; do sleep 0.1; done"], {}, stop_signal=signal.SIGINT),
]
Supervisor(table, folder / "logs", folder / "services.json").run()
"""


def test_a_oneshot_step_runs_to_success_before_the_next_service_and_a_service_stops_on_its_own_signal(
    tmp_path: Path,
):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    supervisor = subprocess.Popen([sys.executable, "-c", ONESHOT, str(tmp_path)], env=env)
    try:
        state_file = tmp_path / "services.json"
        _wait_for(lambda: read_state(state_file).get("after", {}).get("state") == "running")
        # the shell creates the file before `cat` fills it: wait for its content, not its name
        _wait_for(lambda: (tmp_path / "seen").exists() and (tmp_path / "seen").read_text().strip() != "")
        assert (tmp_path / "seen").read_text().strip() == "2"  # started after the second, successful run
        state = read_state(state_file)
        assert state["prepare"]["state"] == "done" and state["prepare"]["exit_codes"] == [1, 0], state
        time.sleep(1.0)  # done stays done: not run again
        assert (tmp_path / "count").read_text().strip() == "2"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        assert (tmp_path / "got").read_text().strip() == "INT"
    finally:
        supervisor.kill()
