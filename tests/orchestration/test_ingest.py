"""ingest_faces with dag.test(): a good batch is curated, a bad one quarantined whole, a duplicate
skipped; and no image is ever lost (every file ends up in archive/ or quarantine/)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import landing, synthetic
from moodloop.core.settings import Settings


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _write_csv_batch(settings: Settings, name: str, seed: int, n: int = 120) -> Path:
    pixels, labels = synthetic.generate_arrays(n, seed=seed)
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), settings.landing_dir / name / "fer2013.csv")
    return settings.landing_dir / name


def _write_bad_image_batch(settings: Settings, name: str) -> Path:
    root = settings.landing_dir / name
    pixels, labels = synthetic.generate_arrays(20, seed=9)
    landing.write_image_folders(zip(pixels, labels, strict=True), root)
    (root / "train" / "happy" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(buf, format="PNG")
    (root / "train" / "joyful").mkdir(parents=True)
    (root / "train" / "joyful" / "face.png").write_bytes(buf.getvalue())  # not an emotion
    return root


def _run(dagbag, batch: str):
    dag = dagbag.dags["ingest_faces"]
    run = dag.test(run_conf={"batch": batch})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture
def settings(moodloop_home) -> Settings:
    return Settings.from_env()


def test_good_batch_is_curated_and_updates_the_asset(dagbag, settings):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    batch = _write_csv_batch(settings, "good-001", seed=1)
    landed = len(_files(batch))
    with create_session() as session:
        events_before = session.query(AssetEvent).count()
    run, states = _run(dagbag, "good-001")
    assert run.state == "success"
    assert states["curate_span"] == "success"
    assert states["quarantine_batch"] == states["skip_duplicate"] == "skipped"
    manifest = json.loads((settings.curated_dir / "span-00001" / "manifest.json").read_text())
    assert manifest["written"] == 120 and manifest["source"] == "good-001"
    archived = settings.archive_dir / "good-001"
    assert len(_files(archived / "data")) == landed and (archived / "REPORT.md").exists()
    assert not batch.exists()
    with create_session() as session:
        assert session.query(AssetEvent).count() == events_before + 1


def test_bad_batch_is_quarantined_whole_with_a_readable_report(dagbag, settings):
    batch = _write_bad_image_batch(settings, "bad-002")
    landed = {str(p.relative_to(batch)) for p in _files(batch)}
    run, states = _run(dagbag, "bad-002")
    assert run.state == "success"
    assert states["quarantine_batch"] == "success" and states["curate_span"] == "skipped"
    quarantined = settings.quarantine_dir / "bad-002"
    assert {str(p.relative_to(quarantined / "data")) for p in _files(quarantined / "data")} == landed
    report = (quarantined / "REPORT.md").read_text()
    assert "QUARANTINED" in report
    assert "`train/happy/corrupt.png`: not a readable image" in report
    assert "`train/joyful/face.png`: label 'joyful' is not an emotion" in report
    contract = json.loads((quarantined / "contract.json").read_text())
    assert contract["passed"] is False and contract["great_expectations"]["success"] is False
    assert not settings.curated_dir.exists() or not list(settings.curated_dir.glob("span-*"))


def test_same_batch_twice_and_shared_faces_are_ingested_once(dagbag, settings):
    first = _write_csv_batch(settings, "day-1", seed=3)
    shutil.copytree(first, settings.landing_dir / "day-1-resent")
    _, states = _run(dagbag, "day-1")
    assert states["curate_span"] == "success"
    _, states = _run(dagbag, "day-1-resent")
    assert states["skip_duplicate"] == "success" and states["curate_span"] == "skipped"
    assert "DUPLICATE" in (settings.archive_dir / "day-1-resent" / "REPORT.md").read_text()

    # A new batch that repeats 40 faces of day-1: only its 80 new faces are curated.
    old_pixels, old_labels = synthetic.generate_arrays(120, seed=3)
    new_pixels, new_labels = synthetic.generate_arrays(80, seed=4)
    landing.write_fer2013_csv(
        zip([*old_pixels[:40], *new_pixels], [*old_labels[:40], *new_labels], strict=True),
        settings.landing_dir / "day-2" / "fer2013.csv",
    )
    _, states = _run(dagbag, "day-2")
    assert states["curate_span"] == "success"
    manifest = json.loads((settings.curated_dir / "span-00002" / "manifest.json").read_text())
    assert (manifest["written"], manifest["duplicates_skipped"]) == (80, 40)
    assert sorted(r["outcome"] for r in map(json.loads, (settings.ingest_dir / "ledger.jsonl").open())) == [
        "curated",
        "curated",
        "duplicate",
    ]


def test_watch_lists_only_ready_batches(settings, monkeypatch):
    from data.landing_zone import LocalLandingZone

    _write_csv_batch(settings, "ready", seed=5, n=5)
    uploading = _write_csv_batch(settings, "uploading", seed=6, n=5)
    zone = LocalLandingZone(settings.landing_dir, settings.archive_dir, settings.quarantine_dir, settle_seconds=3600)
    assert [b.name for b in zone.list_batches() if b.ready] == []
    (uploading / "_SUCCESS").touch()
    assert [b.name for b in zone.list_batches() if b.ready] == ["uploading"]


def _write_labelled_batch(settings: Settings, name: str, groups: list[str]) -> Path:
    root = settings.landing_dir / name
    root.mkdir(parents=True)
    pixels, labels = synthetic.generate_arrays(len(groups), seed=21)
    rows = ["file,label,group"]
    for i, (face, label, group) in enumerate(zip(pixels, labels, groups, strict=True)):
        Image.fromarray(face).resize((96, 96)).save(root / f"face-{i}.png")
        rows.append(f"face-{i}.png,{label},{group}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_batch_column_becomes_a_slice_and_an_identifier_column_is_refused(settings):
    """The extra `group` column of labels.csv reaches the curated span (the bias audit slices by
    it); a column with a value per face is an identifier, and the contract quarantines the batch."""
    from data.ingest import ingest

    _write_labelled_batch(settings, "grouped", ["north", "south", "east"] * 20)
    outcome = ingest(settings, "grouped")
    assert outcome["decision"] == "curate" and outcome["written"] == 60
    manifest = json.loads((settings.curated_dir / "span-00001" / "manifest.json").read_text())
    assert manifest["slice_counts"]["group"] == {"east": 20, "north": 20, "south": 20}
    assert manifest["slice_counts"]["face_size"] == {"large": 60}  # 96 px source images
    assert manifest["slice_counts"]["source"] == {"batch": 60} and manifest["faces_from"] == "batch"  # a team's: real
    assert set(manifest["slice_counts"]) >= {"brightness", "contrast", "sharpness"}

    _write_labelled_batch(settings, "ids", [f"person-{i}" for i in range(60)])
    outcome = ingest(settings, "ids")
    assert outcome["decision"] == "quarantine"
    report = (settings.quarantine_dir / "ids" / "REPORT.md").read_text()
    assert "the extra column `group` groups faces: at most 50 distinct values" in report and "observed 60" in report
    assert len(_files(settings.quarantine_dir / "ids" / "data")) == 61  # nothing lost: 60 faces + labels.csv


def test_every_face_says_where_it_came_from_generated_a_teams_batch_or_corrections(settings):
    """The `source` slice the A/B gate guards: SYNTHETIC_MARKER makes a batch's faces `synthetic`, a
    faces-page corrections batch (its name) makes them `corrections`, any other batch `batch`."""
    from data.ingest import ingest
    from moodloop.core.contracts import CORRECTIONS_BATCH_PREFIX

    landing.mark_synthetic(_write_csv_batch(settings, "generated", seed=31, n=40))
    _write_csv_batch(settings, f"{CORRECTIONS_BATCH_PREFIX}0123abcd-40", seed=32, n=40)
    for batch, expected in (("generated", "synthetic"), (f"{CORRECTIONS_BATCH_PREFIX}0123abcd-40", "corrections")):
        outcome = ingest(settings, batch)
        assert outcome["decision"] == "curate", outcome
        manifest = json.loads((settings.curated_dir / f"span-{outcome['span']:05d}" / "manifest.json").read_text())
        assert manifest["slice_counts"]["source"] == {expected: 40}, (batch, manifest["slice_counts"])
