"""A warm Python for the pipeline env's Airflow tasks: TensorFlow and TFX imported once, one fork per task.

  python -m moodloop.core.warm_python MODULE [ARGS...]          # a task: like `python -m MODULE ARGS`
  python -m moodloop.core.warm_python --serve --socket PATH --preload a,b,c   # the server (the local stack's)

Every task of train_emotion_model is `python -m components.node_runner ...` in the pipeline env,
and each spent 5-7 s importing TensorFlow, TFX and Beam before its component did anything (on 2
cores; more while the Trainer of another run fits): a dozen tasks on the run's critical path. The
local stack starts this server once; a task then connects to its Unix socket, hands over its
stdout and stderr, argv, environment and folder, and waits for the exit code. The server forks a
process for the task with the modules already imported (shared copy-on-write), which runs the
module as `python -m` would: each task is still a process of its own, with its own environment.

Why a fork is safe here: fork copies only the calling thread. The server only imports, it never
runs a TensorFlow op (that would start TensorFlow's thread pools), and it forks from its one
Python thread. Each connection gets a keeper process that forks the task and watches both: when
the task ends it sends the exit code; when the task's process goes away (Airflow killed or timed
out the task) it stops the task's process group. The task dies with its keeper (PDEATHSIG), so a
stopped server leaves nothing behind.

Without a server (no socket: a docker-compose worker, a test, a manual run), or a server of
another interpreter or checkout, the task runs in its own process exactly as before.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

MODULE = "moodloop.core.warm_python"  # what `python -m` runs, for a task or the server
MAX_REQUEST_BYTES = 1 << 20  # argv + environment; a larger request is refused
# A task's process sends its request as soon as it connects: a connection that sends nothing for
# this long is dropped (its keeper, a fork of the server, would otherwise wait for ever)
REQUEST_SECONDS = 10.0
TASK_STOP_SECONDS = 10.0  # SIGTERM, then SIGKILL
_PR_SET_PDEATHSIG = 1
# A Unix socket's path is at most 107 bytes (sun_path); a longer one cannot be bound
MAX_SOCKET_PATH = 107


def run_module(argv: list[str]) -> int:
    """Run `argv[0]` as `python -m` would, with `argv[1:]` as its arguments -> its exit code."""
    module, *args = argv
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exit_code(exc)
    return 0


def exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of a SystemExit: None 0, an int itself, anything else printed, 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


# ---- the task's side ------------------------------------------------------------------------


def run_warm(socket_path: Path, argv: list[str]) -> int | None:
    """Run the task in the server at `socket_path` -> its exit code; None when there is no server
    that can run it here (then the caller runs it in this process)."""
    if len(str(socket_path)) > MAX_SOCKET_PATH or not socket_path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(str(socket_path))
    except OSError:  # a stale socket of a stopped server
        conn.close()
        return None
    with conn:
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "python": _identity()}
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [sys.stdout.fileno(), sys.stderr.fileno()])
            reply = _reply(conn)
        except OSError as error:  # the server went away before it took the task
            reply = {"cold": f"the server went away ({error})"}
        if "error" in reply:
            raise SystemExit(f"error: warm python refused the task: {reply['error']}")
        if "pid" not in reply:  # another interpreter or checkout, edited code, or no server after all
            why = reply.get("cold") or reply.get("closed")
            print(f"warm python: {why}; running the task in its own process", file=sys.stderr)
            return None
        # Blocks until the task ends; if this process is killed, the keeper stops the task.
        ended = _reply(conn)
        if "exit" not in ended:
            raise SystemExit(f"error: warm python lost the task (pid {reply.get('pid')}): {ended}")
        return int(ended["exit"])


def _reply(conn: socket.socket) -> dict:
    data = conn.recv(4096)
    return json.loads(data) if data else {"closed": "the server closed the connection"}


def _identity() -> dict:
    """What must match for the server's imports to be this task's: interpreter and import path."""
    return {"executable": sys.executable, "path": [p or os.getcwd() for p in sys.path[:1]]}


# ---- the server's side ----------------------------------------------------------------------


def serve_command(python: str | Path, socket_path: Path, preload: tuple[str, ...] | list[str]) -> list[str]:
    """The command line of a server (the local stack's service, the benchmark's, the tests')."""
    return [str(python), "-m", MODULE, "--serve", "--socket", str(socket_path), "--preload", ",".join(preload)]


def serve(socket_path: Path, preload: list[str]) -> int:
    from moodloop.core import console

    # As a task's own process: third-party start-up noise (CUDA probes, FutureWarnings) goes to the
    # task's log file, not the console (the early records reach each task's log, as they would)
    console.quiet_console()
    started = time.monotonic()
    for name in preload:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task"))
    print(
        f"warm python: imported {', '.join(preload)} in {time.monotonic() - started:.1f} s "
        f"({threads} OS threads); serving tasks on {socket_path}",
        flush=True,
    )
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the keepers
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o177)  # the socket is this user's only (mode 600) from the moment it exists
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    code = _own_code()
    while True:
        conn, _ = listener.accept()
        changed = [path for path, mtime in code.items() if _mtime(path) != mtime]
        if changed:  # its imports are not the checkout's any more: this task runs on its own, and
            # the server ends (the stack's supervisor starts it again, importing the new code)
            _refuse(conn, f"{len(changed)} of its modules changed since it started ({changed[0]}); it restarts")
            socket_path.unlink(missing_ok=True)
            print(f"warm python: {changed[0]} and {len(changed) - 1} more changed since the start; exiting")
            return 3
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os._exit(_keep(conn))
        conn.close()


def _own_code() -> dict[str, int]:
    """The files of the imported modules that belong to this checkout (under the import path's
    first entry, the repository), with their modification times: the code a task of the checkout
    expects. An edited file there means the task would run old code in a fork of this process."""
    checkout = os.path.abspath(sys.path[0] or os.getcwd()) + os.sep
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return {path: _mtime(path) for path in files if path and os.path.abspath(path).startswith(checkout)}


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _refuse(conn: socket.socket, why: str) -> None:
    """Tell a task to run on its own (its request read, its file descriptors closed)."""
    with conn, contextlib.suppress(OSError, ValueError):
        conn.settimeout(REQUEST_SECONDS)  # the server's own loop waits on this one
        _, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 2)
        for fd in fds:
            os.close(fd)
        _send(conn, {"cold": why})


def _keep(conn: socket.socket) -> int:
    """The keeper of one task: check the request, fork the task, report how it ended."""
    try:
        conn.settimeout(REQUEST_SECONDS)
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 2)
        conn.settimeout(None)  # from here it waits as long as the task runs
        request = _checked(json.loads(data), fds)
    except (OSError, ValueError, TypeError) as exc:
        _send(conn, {"error": str(exc)})
        return 1
    if request["python"] != _identity():
        _send(conn, {"cold": f"the server runs {_identity()}, the task {request['python']}"})
        return 0
    keeper = os.getpid()
    task = os.fork()
    if task == 0:
        conn.close()
        _run_task(request, fds, keeper)
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGTERM, lambda *_: _stop(task))  # the server's service stopped
    _send(conn, {"pid": task})
    ended = os.pidfd_open(task)
    while True:
        ready, _, _ = select.select([conn, ended], [], [])
        if ended in ready:
            _, status = os.waitpid(task, 0)
            code = os.waitstatus_to_exitcode(status)
            _send(conn, {"exit": code if code >= 0 else 128 - code})
            return 0
        if not conn.recv(16):  # the task's process is gone: Airflow killed it
            _stop(task)
            return 0


def _checked(request: dict, fds: list[int]) -> dict:
    if len(fds) != 2:
        raise ValueError(f"a task hands over its stdout and stderr: 2 file descriptors, not {len(fds)}")
    argv, env = request.get("argv"), request.get("env")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a non-empty list of strings (the module, then its arguments)")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env must map strings to strings")
    if not isinstance(request.get("cwd"), str):
        raise ValueError("cwd must be a string")
    return request


def _send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # the task's process is gone; nobody waits for this
        conn.send(json.dumps(message).encode())


def _stop(task: int) -> None:
    """SIGTERM to the task's process group, SIGKILL after TASK_STOP_SECONDS; then the keeper ends."""
    try:
        os.killpg(task, signal.SIGTERM)
        deadline = time.monotonic() + TASK_STOP_SECONDS
        while time.monotonic() < deadline:
            if os.waitpid(task, os.WNOHANG)[0]:
                os._exit(0)
            time.sleep(0.1)
        os.killpg(task, signal.SIGKILL)
    except (ProcessLookupError, ChildProcessError):
        pass
    os._exit(0)


def _run_task(request: dict, fds: list[int], keeper: int) -> None:
    """In the task's process: become the task (its stdio, folder, environment), run it, exit."""
    code = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with its keeper
        if os.getppid() != keeper:  # the keeper died before the line above: nobody waits for this task
            os._exit(1)
        os.setpgid(0, 0)  # its own group: stopped with the processes it starts
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((devnull, 0), (fds[0], 1), (fds[1], 2)):
            os.dup2(source, target)
        for fd in (devnull, *fds):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = run_module(request["argv"])
    except BaseException:  # noqa: BLE001 - whatever the task raised, it is printed as `python -m` would
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv[:1] != ["--serve"]:
        if not argv or argv[0].startswith("-"):
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
        from moodloop.core.settings import Settings

        settings = Settings.from_env()
        warm = run_warm(settings.airflow.warm_python_socket, argv) if settings.airflow.warm_python else None
        return run_module(argv) if warm is None else warm
    parser = argparse.ArgumentParser(prog="python -m moodloop.core.warm_python", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    parser.add_argument("--preload", default="", help="modules to import once, comma-separated")
    args = parser.parse_args(argv)
    return serve(args.socket, [name for name in args.preload.split(",") if name])


if __name__ == "__main__":
    sys.exit(main())
