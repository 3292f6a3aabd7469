"""The landing zone: where new batches arrive, and where they go afterwards. Nothing is deleted.

A batch is one top-level entry under `landing/`: a folder (images, labels.csv, CSVs) or a single
CSV file. It is ready when it holds a `_SUCCESS` marker or nothing in it changed for
`settle_seconds` (uploads in progress are left alone). After ingest it moves, whole, to
`archive/<batch>/data/` (accepted) or `quarantine/<batch>/data/` (rejected), with the reports
beside `data/`.

Two stores with the same layout: a local folder, or an S3 bucket reached with boto3 (prefixes
landing/, archive/, quarantine/).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moodloop.core.contracts import READY_MARKER
from moodloop.core.files import publish_dir
from moodloop.core.settings import s3_client

if TYPE_CHECKING:
    from moodloop.core.settings import Settings

AREAS = ("archive", "quarantine")


@dataclasses.dataclass(frozen=True)
class Batch:
    name: str
    modified: float  # newest modification time of anything in it (epoch seconds)
    ready: bool


class LandingZone(Protocol):
    def list_batches(self) -> list[Batch]: ...

    def fetch(self, name: str) -> Path:
        """A local folder or file holding the batch (the batch itself for a local zone)."""

    def move(self, name: str, area: str, reports: dict[str, bytes]) -> str:
        """Move the batch to `<area>/<name>/data/` with `reports` beside it; returns where."""

    def locate(self, name: str) -> str | None:
        """Where a batch that left the landing area went, if it did."""


def batch_content_hash(path: Path) -> str:
    """SHA-256 over the batch's files (relative names and contents): same files, same hash."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name == READY_MARKER:
            continue
        rel = file.name if path.is_file() else str(file.relative_to(path))
        digest.update(rel.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _unique(folder: Path) -> Path:
    """`folder`, or `folder-<time>` when a batch of the same name was handled before."""
    return folder if not folder.exists() else folder.with_name(f"{folder.name}-{time.strftime('%Y%m%dT%H%M%S')}")


class LocalLandingZone:
    def __init__(self, landing: Path, archive: Path, quarantine: Path, settle_seconds: float = 10.0):
        self.landing, self.settle = Path(landing), settle_seconds
        self.areas = {"archive": Path(archive), "quarantine": Path(quarantine)}

    def list_batches(self) -> list[Batch]:
        if not self.landing.is_dir():
            return []
        batches = []
        now = time.time()
        for entry in sorted(self.landing.iterdir()):
            if entry.name.startswith((".", "_")):
                continue  # hidden: uploads in progress write to .name and rename
            files = [entry] if entry.is_file() else [p for p in entry.rglob("*")]
            modified = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in files if p.exists()])
            marker = entry.is_dir() and (entry / READY_MARKER).exists()
            batches.append(Batch(entry.name, modified, marker or now - modified >= self.settle))
        return batches

    def fetch(self, name: str) -> Path:
        path = self.landing / name
        if not path.exists():
            raise FileNotFoundError(f"batch {name!r} is not in the landing zone {self.landing}")
        return path

    def move(self, name: str, area: str, reports: dict[str, bytes]) -> str:
        destination = _unique(self.areas[area] / name)
        with publish_dir(destination) as staging:
            for file_name, content in reports.items():
                (staging / file_name).write_bytes(content)
            source = self.fetch(name)
            data = staging / "data"
            if source.is_file():
                data.mkdir()
                self._transfer(source, data / source.name)
            else:
                self._transfer(source, data)
        return str(destination)

    def _transfer(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def locate(self, name: str) -> str | None:
        for folder in self.areas.values():
            if (folder / name).exists():
                return str(folder / name)
        return None


class GivenBatch(LocalLandingZone):
    """One batch outside the landing zone (`moodloop curate PATH`, `moodloop train --data PATH`),
    ingested by the same steps as a landed one (contract, ledger, duplicates, quarantine), but
    copied, not moved, to archive/ or quarantine/: the user's own folder stays as it was."""

    def __init__(self, path: Path, archive: Path, quarantine: Path):
        path = Path(path).resolve()
        super().__init__(path.parent, archive, quarantine, settle_seconds=0.0)
        self.name = path.name

    def list_batches(self) -> list[Batch]:
        return [batch for batch in super().list_batches() if batch.name == self.name]

    def _transfer(self, source: Path, target: Path) -> None:
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)


class S3LandingZone:
    """The same layout in an S3 bucket (AWS, SeaweedFS, MinIO ...), via boto3."""

    def __init__(self, bucket: str, client, work_dir: Path, settle_seconds: float = 10.0):
        self.bucket, self.s3, self.work_dir, self.settle = bucket, client, Path(work_dir), settle_seconds

    def _objects(self, prefix: str) -> list[dict]:
        objects = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            objects += page.get("Contents", [])
        return objects

    def list_batches(self) -> list[Batch]:
        grouped: dict[str, list[dict]] = {}
        for obj in self._objects("landing/"):
            rest = obj["Key"][len("landing/") :]
            if not rest or rest.startswith((".", "_")):
                continue
            grouped.setdefault(rest.split("/", 1)[0], []).append(obj)
        now = time.time()
        batches = []
        for name, objects in sorted(grouped.items()):
            modified = max(o["LastModified"].timestamp() for o in objects)
            marker = any(o["Key"].endswith("/" + READY_MARKER) for o in objects)
            batches.append(Batch(name, modified, marker or now - modified >= self.settle))
        return batches

    def _keys(self, name: str) -> list[str]:
        exact = [o["Key"] for o in self._objects(f"landing/{name}") if o["Key"] == f"landing/{name}"]
        return exact or [o["Key"] for o in self._objects(f"landing/{name}/")]

    def fetch(self, name: str) -> Path:
        keys = self._keys(name)
        if not keys:
            raise FileNotFoundError(f"batch {name!r} is not in s3://{self.bucket}/landing/")
        local = self.work_dir / name
        shutil.rmtree(local, ignore_errors=True)
        for key in keys:
            rel = key[len(f"landing/{name}") :].lstrip("/")
            target = local / rel if rel else local
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, key, str(target))
        return local

    def move(self, name: str, area: str, reports: dict[str, bytes]) -> str:
        prefix = f"{area}/{name}"
        if self._objects(prefix + "/"):
            prefix = f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}"
        for file_name, content in reports.items():
            self.s3.put_object(Bucket=self.bucket, Key=f"{prefix}/{file_name}", Body=content)
        for key in self._keys(name):
            rel = key[len(f"landing/{name}") :].lstrip("/") or name
            target = f"{prefix}/data/{rel}"
            self.s3.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
            self.s3.head_object(Bucket=self.bucket, Key=target)  # the copy exists before the original goes
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{self.bucket}/{prefix}"

    def locate(self, name: str) -> str | None:
        for area in AREAS:
            if self._objects(f"{area}/{name}/"):
                return f"s3://{self.bucket}/{area}/{name}"
        return None


def landing_zone(settings: Settings) -> LandingZone:
    """The zone the settings name: `MOODLOOP_LANDING_URL=s3://bucket` or the local folders."""
    if settings.landing_url.startswith("s3://"):
        bucket = settings.landing_url[len("s3://") :].strip("/")
        return S3LandingZone(bucket, s3_client(settings), settings.ingest_dir / "work", settings.landing_settle_seconds)
    if settings.landing_url:
        raise ValueError(
            f"MOODLOOP_LANDING_URL must be empty (local folders) or s3://bucket, got {settings.landing_url!r}"
        )
    return LocalLandingZone(
        settings.landing_dir, settings.archive_dir, settings.quarantine_dir, settings.landing_settle_seconds
    )
