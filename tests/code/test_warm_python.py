"""The warm Python (moodloop/core/warm_python.py): a task run through it behaves as `python -m`
run in its own process (output, exit code, environment, folder), TensorFlow works in a task forked
from a process that imported it, a killed task's process takes the task with it, and a request
that is not a task's is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moodloop.core import warm_python
from moodloop.core.settings import REPO_ROOT

TARGET = "tests.code.warm_target"


def start_server(folder: Path, preload: str) -> tuple[subprocess.Popen, Path]:
    socket_path = folder / "warm.sock"
    command = warm_python.serve_command(sys.executable, socket_path, [preload])
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not socket_path.exists():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the warm Python did not listen within 120 s"
        time.sleep(0.2)
    return process, socket_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A warm Python that imported TensorFlow, as the stack's imports it."""
    process, socket_path = start_server(tmp_path_factory.mktemp("warm"), "tensorflow")
    yield socket_path
    process.terminate()
    process.wait(timeout=30)


def run(socket_path: Path, *args: str, warm: bool = True, cwd: Path = REPO_ROOT, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "MOODLOOP_WARM_PYTHON": "1" if warm else "0",
        "MOODLOOP_WARM_PYTHON_SOCKET": str(socket_path),
        "WARM_TARGET_VALUE": "from the task's environment",
    }
    command = [sys.executable, "-m", "moodloop.core.warm_python", TARGET, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def ended(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out.decode(), err.decode()


def test_a_task_run_warm_behaves_as_one_run_in_its_own_process(server):
    warm_code, warm_out, warm_err = ended(run(server, "echo", "3"))
    cold_code, cold_out, cold_err = ended(run(server, "echo", "3", warm=False))
    assert (warm_code, cold_code) == (3, 3)
    warm, cold = json.loads(warm_out), json.loads(cold_out)
    # warm: forked by the server's keeper; cold: the process this test started
    assert warm.pop("parent") != os.getpid() and cold.pop("parent") == os.getpid()
    assert warm == cold == {"argv": ["echo", "3"], "value": "from the task's environment", "cwd": str(REPO_ROOT)}
    assert "a line on stderr" in warm_err and "a line on stderr" in cold_err
    code, _, err = ended(run(server, "raise"))
    assert code == 1 and "RuntimeError: the task failed" in err


def test_tensorflow_runs_in_a_task_forked_from_the_process_that_imported_it(server):
    code, out, err = ended(run(server, "tf"))
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["sum"] == 256.0**3 and result["parent"] != os.getpid()  # in the server's fork


def test_a_killed_task_process_stops_the_task(server, tmp_path):
    pid_file = tmp_path / "task.pid"
    client = run(server, "sleep", str(pid_file))
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and client.poll() is None, "the task did not start"
        time.sleep(0.1)
    task = int(pid_file.read_text())
    assert task != client.pid  # the task runs in the server's fork, not in the client
    client.send_signal(signal.SIGKILL)  # as Airflow kills a task it times out or marks failed
    client.wait(timeout=10)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{task}").exists() and "zombie" not in Path(f"/proc/{task}/status").read_text():
        assert time.monotonic() < deadline, f"the task (pid {task}) still runs 30 s after its process was killed"
        time.sleep(0.2)


def test_a_task_of_another_checkout_runs_in_its_own_process(server, tmp_path):
    # Its modules resolve from its own folder, not the server's: the server says so, and it runs cold.
    code, _, err = ended(_elsewhere(server, tmp_path))
    assert code == 0 and "running the task in its own process" in err, err


def _elsewhere(socket_path: Path, folder: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "MOODLOOP_WARM_PYTHON_SOCKET": str(socket_path),
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "moodloop.core.warm_python", TARGET, "echo", "0"]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_request_that_is_not_a_task_is_refused(server):
    for payload, fds in ((b"not json", [1, 2]), (json.dumps({"argv": []}).encode(), [1, 2]), (b"{}", [])):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(30)
            conn.connect(str(server))
            socket.send_fds(conn, [payload], fds)
            assert "error" in json.loads(conn.recv(4096)), payload

    # A connection that sends nothing neither holds up other tasks nor stays open for ever.
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as silent:
        silent.settimeout(warm_python.REQUEST_SECONDS + 30)
        silent.connect(str(server))
        code, _, err = ended(run(server, "echo", "0"))
        assert code == 0 and "running the task in its own process" not in err, err
        assert "error" in json.loads(silent.recv(4096) or b'{"error": "closed"}')


def test_after_its_checkout_changed_a_task_runs_on_its_own_and_the_server_restarts(tmp_path):
    """A fork would run the code the server imported, not the edited file: the task is told to run
    in its own process (the new code), and the server exits for the stack's supervisor to start it
    again."""
    process, socket_path = start_server(tmp_path, "tests.code.warm_preloaded")
    try:
        code, _, err = ended(run(socket_path, "echo", "0"))
        assert code == 0 and "running the task in its own process" not in err  # warm while unchanged
        edited = REPO_ROOT / "tests" / "code" / "warm_preloaded.py"
        later = edited.stat().st_mtime + 5
        os.utime(edited, (later, later))
        code, out, err = ended(run(socket_path, "echo", "0"))
        assert code == 0 and json.loads(out)["parent"] == os.getpid(), err  # it ran in its own process
        assert "warm_preloaded.py" in err and "running the task in its own process" in err, err
        assert process.wait(timeout=30) == 3 and not socket_path.exists()
    finally:
        if process.poll() is None:
            process.kill()
