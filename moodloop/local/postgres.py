"""The production profile's PostgreSQL: a cluster of the stack's own (Debian's `postgresql`
package, the binaries under /usr/lib/postgresql/<version>/bin), its files in
MOODLOOP_POSTGRES_DIR, listening on 127.0.0.1:MOODLOOP_POSTGRES_PORT only (no Unix socket), one
role `moodloop` with a generated password (kept with the stack's secrets, mode 600) and a database
per user: `airflow` (Airflow's metadata and Celery's results) and `mlmd` (ML Metadata), as
docker-compose declares them.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` system user and
its processes run as that user (`runuser`), as Debian's own `pg_ctlcluster` does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from moodloop.core.files import write_private_text
from moodloop.core.settings import POSTGRES_MLMD_DATABASE, POSTGRES_ROLE, Settings

ROLE = POSTGRES_ROLE
AIRFLOW_DATABASE = "airflow"
MLMD_DATABASE = POSTGRES_MLMD_DATABASE
DATABASES = (AIRFLOW_DATABASE, MLMD_DATABASE)
SYSTEM_USER = "postgres"  # who owns and runs the cluster when the stack runs as root
STOP_SIGNAL = signal.SIGINT  # PostgreSQL's "fast" shutdown: ends the sessions, then stops cleanly


def binaries() -> Path:
    """The folder holding initdb and postgres: Debian's newest version, else the PATH's."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if debian:
        return debian[-1].parent
    found = shutil.which("postgres") or shutil.which("initdb")
    if found:
        return Path(found).parent
    raise SystemExit(
        "MOODLOOP_PROFILE=production needs PostgreSQL's server: sudo apt-get install postgresql "
        "(make setup does it as root)"
    )


def data_dir(settings: Settings) -> Path:
    return settings.postgres_dir / "data"


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _reachable_by_owner(folder: Path) -> bool:
    """Whether the cluster's owner can reach `folder` (as root: every folder above it lets the
    `postgres` user through; pytest's and mkdtemp's folders do not)."""
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(_as_owner(["test", "-x", str(folder)]), capture_output=True)
    return probe.returncode == 0


def init(settings: Settings, password: str) -> bool:
    """Create the cluster once (initdb: the `moodloop` role, password authentication). -> whether
    it was created now."""
    data = data_dir(settings)
    if (data / "PG_VERSION").exists():
        return False
    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SYSTEM_USER)
        os.chown(settings.postgres_dir, owner.pw_uid, owner.pw_gid)
        settings.postgres_dir.chmod(0o700)
        if not _reachable_by_owner(settings.postgres_dir):
            raise SystemExit(
                f"PostgreSQL runs as the {SYSTEM_USER} user here (as root), which cannot reach "
                f"{settings.postgres_dir}: set MOODLOOP_POSTGRES_DIR to a folder it can reach"
            )
    # The password goes to initdb in a file only the owner reads, never on a command line.
    with tempfile.NamedTemporaryFile("w", dir=settings.postgres_dir, delete=False) as file:
        file.write(password)
    secret = Path(file.name)
    try:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SYSTEM_USER)
            os.chown(secret, owner.pw_uid, owner.pw_gid)
        command = [str(binaries() / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={secret}"]
        command += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"]
        subprocess.run(_as_owner(command), check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"initdb failed: {error.stderr.strip() or error.stdout.strip()}") from error
    finally:
        secret.unlink(missing_ok=True)
    return True


def write_passfile(settings: Settings, password: str) -> Path:
    """libpq's password file for the stack's role (mode 600): what ML Metadata connects with, so
    its URL (in logs, in compiled pipelines) holds no password (Settings.metadata_location)."""
    return write_private_text(settings.postgres_passfile, f"127.0.0.1:{settings.postgres_port}:*:{ROLE}:{password}\n")


def server_command(settings: Settings) -> list[str]:
    """The postmaster in the foreground (the stack's supervisor watches it): loopback TCP only."""
    command = [str(binaries() / "postgres"), "-D", str(data_dir(settings))]
    command += ["-c", "listen_addresses=127.0.0.1", "-p", str(settings.postgres_port)]
    command += ["-c", "unix_socket_directories=", "-c", "max_connections=200"]
    return _as_owner(command)


def url(settings: Settings, password: str, database: str, scheme: str = "postgresql") -> str:
    return f"{scheme}://{ROLE}:{password}@127.0.0.1:{settings.postgres_port}/{database}"


def _connect(settings: Settings, password: str, database: str = "postgres"):
    import psycopg2  # the orchestration env's driver (Airflow's metadata DB uses it too)

    return psycopg2.connect(
        host="127.0.0.1",
        port=settings.postgres_port,
        user=ROLE,
        password=password,
        dbname=database,
        connect_timeout=5,
    )


def ready(settings: Settings, password: str) -> bool:
    with contextlib.closing(_connect(settings, password)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


def create_databases(settings: Settings, password: str) -> list[str]:
    """Create what is missing of DATABASES. -> the ones created now."""
    created = []
    with contextlib.closing(_connect(settings, password)) as connection:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cursor.fetchall()}
            for database in DATABASES:
                if database not in present:
                    cursor.execute(f'CREATE DATABASE "{database}"')
                    created.append(database)
    return created


def table_counts(settings: Settings, password: str) -> dict[str, int]:
    """{database: tables in its public schema}: what `make status` shows of each database."""
    counts = {}
    for database in DATABASES:
        try:
            connection = contextlib.closing(_connect(settings, password, database))
            with connection as opened, opened.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
                counts[database] = cursor.fetchone()[0]
        except Exception:  # noqa: BLE001 - down or not created yet: shown as missing
            continue
    return counts
