"""The landing zone on S3: a real SeaweedFS S3 server on 127.0.0.1, reached with boto3."""

from __future__ import annotations

import json
import secrets

import pytest

from data import ingest, landing, synthetic
from data.landing_zone import S3LandingZone
from moodloop.core.settings import Settings, s3_client
from moodloop.local.s3server import free_port, start_seaweedfs, stop, wait_for_s3

BUCKET = "moodloop-test"


@pytest.fixture(scope="module")
def s3_settings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seaweedfs")
    port, access, secret = free_port(), "test-" + secrets.token_hex(4), secrets.token_urlsafe(16)
    server = start_seaweedfs(folder / "data", port, access, secret, log_file=folder / "weed.log")
    try:
        settings = Settings.from_env(
            home=folder / "home",
            landing_url=f"s3://{BUCKET}",
            landing_settle_seconds=0.0,
            s3={"endpoint_url": f"http://127.0.0.1:{port}", "access_key": access, "secret_key": secret},
        )
        wait_for_s3(s3_client(settings), BUCKET)
        yield settings
    finally:
        stop(server)


def _upload_csv(client, key: str, seed: int, n: int, tmp_path) -> None:
    pixels, labels = synthetic.generate_arrays(n, seed=seed)
    path = tmp_path / f"{seed}.csv"
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), path)
    client.upload_file(str(path), BUCKET, key)


def _keys(client, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_s3_batches_are_ingested_and_quarantined_with_nothing_deleted(s3_settings, tmp_path):
    client = s3_client(s3_settings)
    _upload_csv(client, "landing/batch-a/fer2013.csv", seed=1, n=50, tmp_path=tmp_path)
    client.upload_file("data/samples/fer2013_mixed.csv", BUCKET, "landing/mixed.csv")
    zone = S3LandingZone(BUCKET, client, s3_settings.ingest_dir / "work", settle_seconds=0)
    assert sorted(b.name for b in zone.list_batches() if b.ready) == ["batch-a", "mixed.csv"]

    good = ingest.ingest(s3_settings, "batch-a", zone)
    bad = ingest.ingest(s3_settings, "mixed.csv", zone)
    assert good["decision"] == "curate" and good["span"] == 1 and good["written"] == 50
    assert bad["decision"] == "quarantine"

    assert _keys(client, "landing/") == []
    assert _keys(client, "archive/batch-a/") == [
        "archive/batch-a/REPORT.md",
        "archive/batch-a/contract.json",
        "archive/batch-a/data/fer2013.csv",
    ]
    assert _keys(client, "quarantine/mixed.csv/") == [
        "quarantine/mixed.csv/REPORT.md",
        "quarantine/mixed.csv/contract.json",
        "quarantine/mixed.csv/data/mixed.csv",
    ]
    report = client.get_object(Bucket=BUCKET, Key="quarantine/mixed.csv/REPORT.md")["Body"].read().decode()
    assert "fer2013_mixed.csv:row 5" in report or "mixed.csv:row 5" in report
    contract = json.loads(client.get_object(Bucket=BUCKET, Key="quarantine/mixed.csv/contract.json")["Body"].read())
    assert contract["faces"] == 8 and contract["items"] == 14

    # The same batch landing again is recognised by content and archived as a duplicate.
    _upload_csv(client, "landing/batch-a-again/fer2013.csv", seed=1, n=50, tmp_path=tmp_path)
    assert ingest.ingest(s3_settings, "batch-a-again", zone)["decision"] == "duplicate"
    assert _keys(client, "archive/batch-a-again/data/") == ["archive/batch-a-again/data/fer2013.csv"]


def test_s3_down_during_an_ingest_keeps_the_batch_in_the_landing_zone_until_it_returns(tmp_path):
    """The contract passed, then S3 went away before the batch was curated: the step fails with
    the connection error (Airflow retries it), the batch is still in landing/ and nothing was
    curated; when S3 is back the retried step curates it once and archives it."""
    port, access, secret = free_port(), "test-" + secrets.token_hex(4), secrets.token_urlsafe(16)
    server = start_seaweedfs(tmp_path / "data", port, access, secret, log_file=tmp_path / "weed.log")
    settings = Settings.from_env(
        home=tmp_path / "home",
        landing_url=f"s3://{BUCKET}",
        landing_settle_seconds=0.0,
        s3={
            "endpoint_url": f"http://127.0.0.1:{port}",
            "access_key": access,
            "secret_key": secret,
        },
    )
    client = s3_client(settings)
    try:
        wait_for_s3(client, BUCKET)
        _upload_csv(client, "landing/batch-z/fer2013.csv", seed=5, n=40, tmp_path=tmp_path)
        zone = S3LandingZone(BUCKET, client, settings.ingest_dir / "work", settle_seconds=0)
        checked = ingest.check(settings, "batch-z", zone)
        assert checked["decision"] == "curate"
        stop(server)
        with pytest.raises(Exception, match="(?i)connect|endpoint"):
            ingest.curate(settings, checked, zone)
        assert not settings.curated_dir.exists() or not any(settings.curated_dir.iterdir())
        server = start_seaweedfs(tmp_path / "data", port, access, secret, log_file=tmp_path / "weed.log")
        wait_for_s3(client, BUCKET)
        assert _keys(client, "landing/") == ["landing/batch-z/fer2013.csv"]  # still there, whole
        outcome = ingest.curate(settings, checked, zone)  # what Airflow's retry of the task does
        assert outcome["span"] == 1 and outcome["written"] == 40
        assert _keys(client, "landing/") == [] and "archive/batch-z/data/fer2013.csv" in _keys(client, "archive/")
    finally:
        stop(server)
