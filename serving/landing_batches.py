"""Delivering a batch to the landing zone (the landing-batch contract's writer side, for writers
outside the data stage: the gateway's corrected faces). The batch appears whole: in a local zone
it is written under a hidden name and renamed; in S3 the READY_MARKER is put after every file
(a batch left half-written by a failed upload is rewritten whole by the retry, under the same
name, before the landing zone's settle time has passed).
"""

from __future__ import annotations

from pathlib import Path

from moodloop.core.contracts import READY_MARKER
from moodloop.core.files import publish_dir
from moodloop.core.settings import Settings, s3_client


def deliver_batch(settings: Settings, name: str, files: dict[str, bytes]) -> str:
    """Write `files` (relative path -> content) as landing batch `name`; returns where it is.
    Delivering the same name again rewrites the same batch (S3) or finds it there (local): a
    retry never makes a second batch."""
    if not name or "/" in name or name.startswith((".", "_")):
        raise ValueError(f"a batch name is one visible path segment, got {name!r}")
    if settings.landing_url.startswith("s3://"):
        bucket = settings.landing_url[len("s3://") :].strip("/")
        client = s3_client(settings)
        for rel, content in files.items():
            client.put_object(Bucket=bucket, Key=f"landing/{name}/{rel}", Body=content)
        client.put_object(Bucket=bucket, Key=f"landing/{name}/{READY_MARKER}", Body=b"")
        return f"s3://{bucket}/landing/{name}"
    target = Path(settings.landing_dir) / name
    if target.exists():  # delivered before (a retry after the journal failed): the same faces
        return str(target)
    with publish_dir(target, ready_marker=READY_MARKER) as staging:
        for rel, content in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return str(target)
