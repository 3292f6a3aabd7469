"""Ingest one landing batch: data contract at the door, then curate, quarantine, or skip.

The steps are separate functions so the `ingest_faces` DAG can show each as a task; each is
safe to re-run (a retried task after a crash neither loses nor double-ingests a batch):
- `check`: fetch the batch, hash its content, look it up in the ledger, read it, run the
  Great Expectations contract; write the reports to the batch's work folder.
- `curate`: append the faces as the next curated span (faces seen before are skipped by content
  hash; a span already written for this batch is found again by its batch hash), then archive.
- `quarantine`: move the whole batch to quarantine/<batch>/ with contract.json and REPORT.md.
- `skip_duplicate`: the same content was ingested before; archive it with a note.
Every outcome is appended to `<ingest_dir>/ledger.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from data.curated import batch_source, existing_spans, face_slices, write_span
from data.landing_contract import ContractLimits, render_report, validate
from data.landing_zone import GivenBatch, LandingZone, batch_content_hash, landing_zone
from data.readers import read_batch
from moodloop.core import alerts, console
from moodloop.core.contracts import CURATED_MANIFEST, SOURCE_ATTRIBUTE, SYNTHETIC_MARKER
from moodloop.core.settings import Settings

log = logging.getLogger("data.ingest")  # by name: `python -m data.ingest` runs it as __main__

LEDGER = "ledger.jsonl"


def _ledger(settings: Settings) -> Path:
    return settings.ingest_dir / LEDGER


def ledger_records(settings: Settings) -> list[dict[str, Any]]:
    path = _ledger(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_ledger(settings: Settings, record: dict[str, Any]) -> None:
    settings.ingest_dir.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    with open(_ledger(settings), "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _work(settings: Settings, batch: str) -> Path:
    folder = settings.ingest_dir / "reports" / batch
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check(
    settings: Settings, batch: str, zone: LandingZone | None = None, keep_good_rows: bool = False
) -> dict[str, Any]:
    """Returns {"decision": "curate" | "quarantine" | "duplicate" | "done", ...} for the branch.
    `keep_good_rows` (by hand only, `moodloop curate --keep-good-rows`): a batch that breaks the
    contract is curated with its usable faces instead of quarantined; the ledger says "partial"."""
    zone = zone or landing_zone(settings)
    try:
        local = zone.fetch(batch)
    except FileNotFoundError:
        where = zone.locate(batch)
        if where:  # handled by an earlier attempt of this run
            return {"batch": batch, "decision": "done", "where": where}
        raise
    batch_hash = batch_content_hash(local)
    accepted_before = [
        r for r in ledger_records(settings) if r.get("batch_hash") == batch_hash and r["outcome"] == "curated"
    ]
    if accepted_before:
        return {"batch": batch, "batch_hash": batch_hash, "decision": "duplicate", "first": accepted_before[0]}

    result = read_batch(local, settings.max_image_bytes, settings.max_image_pixels)
    contract = validate(result, ContractLimits())
    work = _work(settings, batch)
    summary = {"batch": batch, "batch_hash": batch_hash, **contract.summary()}
    (work / "contract.json").write_text(
        json.dumps({**summary, "great_expectations": contract.gx_result}, indent=1, default=str)
    )
    partial = keep_good_rows and not contract.passed and contract.faces > 0
    report = render_report(batch, contract, partial=partial)
    (work / "REPORT.md").write_text(report)
    log.info(report)
    decision = "curate" if contract.passed or partial else "quarantine"
    return {
        "batch": batch,
        "batch_hash": batch_hash,
        "decision": decision,
        "faces": contract.faces,
        "items": contract.items,
        "class_counts": contract.class_counts,
        "failures": len(contract.failures),
        "partial": partial,
    }


def _reports(settings: Settings, batch: str) -> dict[str, bytes]:
    work = _work(settings, batch)
    return {name: (work / name).read_bytes() for name in ("contract.json", "REPORT.md") if (work / name).exists()}


def _span_of_batch(settings: Settings, batch_hash: str) -> int | None:
    for span, path in existing_spans(settings.curated_dir).items():
        if json.loads((path / CURATED_MANIFEST).read_text()).get("batch_hash") == batch_hash:
            return span
    return None


def curate(settings: Settings, checked: dict[str, Any], zone: LandingZone | None = None) -> dict[str, Any]:
    """Returns {"span": N or None, "written": k, "duplicates": d, "archived": where}."""
    zone = zone or landing_zone(settings)
    batch, batch_hash = checked["batch"], checked["batch_hash"]
    span = _span_of_batch(settings, batch_hash)
    if span is not None:
        outcome = {"span": span, "written": None, "duplicates": None, "recovered": True}
    else:
        fetched = zone.fetch(batch)
        result = read_batch(fetched, settings.max_image_bytes, settings.max_image_pixels)
        synthetic = fetched.is_dir() and (fetched / SYNTHETIC_MARKER).is_file()
        source = batch_source(batch, synthetic)
        written = write_span(
            settings.curated_dir,
            [f.pixels for f in result.faces],
            [f.label for f in result.faces],
            source=batch,
            extra={"batch_hash": batch_hash, "synthetic": synthetic, "faces_from": source},
            attributes=[
                face_slices(f.pixels, f.attributes, f.source_side) | {SOURCE_ATTRIBUTE: source} for f in result.faces
            ],
        )
        outcome = {"span": written.span, "written": written.written, "duplicates": written.duplicates}
    outcome["archived"] = zone.move(batch, "archive", _reports(settings, batch))
    outcome["partial"] = bool(checked.get("partial"))
    _append_ledger(settings, {"batch": batch, "batch_hash": batch_hash, "outcome": "curated", **outcome})
    return {"batch": batch, **outcome}


def quarantine(settings: Settings, checked: dict[str, Any], zone: LandingZone | None = None) -> dict[str, Any]:
    zone = zone or landing_zone(settings)
    batch = checked["batch"]
    where = zone.move(batch, "quarantine", _reports(settings, batch))
    _append_ledger(
        settings,
        {
            "batch": batch,
            "batch_hash": checked["batch_hash"],
            "outcome": "quarantined",
            "where": where,
            "failures": checked.get("failures"),
        },
    )
    log.info(f"batch {batch} QUARANTINED whole -> {where} (see REPORT.md there)")
    numbers = {
        "rules broken": checked.get("failures"),
        "items": checked.get("items"),
        "usable faces": checked.get("faces"),
        "report": f"{where}/REPORT.md",
    }
    alerts.post(settings, alerts.QUARANTINE, f"landing batch {batch} quarantined", numbers)
    return {"batch": batch, "quarantined": where}


def skip_duplicate(settings: Settings, checked: dict[str, Any], zone: LandingZone | None = None) -> dict[str, Any]:
    zone = zone or landing_zone(settings)
    batch, first = checked["batch"], checked["first"]
    note = (
        f"# Landing batch `{batch}`: DUPLICATE\n\nThe same files were ingested before as batch "
        f"`{first['batch']}` (span {first.get('span')}) on {first['time']}; nothing new was curated.\n"
    )
    where = zone.move(batch, "archive", {"REPORT.md": note.encode()})
    _append_ledger(
        settings,
        {
            "batch": batch,
            "batch_hash": checked["batch_hash"],
            "outcome": "duplicate",
            "where": where,
            "same_as": first["batch"],
        },
    )
    log.info(f"batch {batch} is a duplicate of {first['batch']}: archived to {where}, nothing curated")
    return {"batch": batch, "duplicate_of": first["batch"], "archived": where}


def ingest(
    settings: Settings, batch: str, zone: LandingZone | None = None, keep_good_rows: bool = False
) -> dict[str, Any]:
    """All steps in one call (CLI and tests); the DAG runs them as separate tasks."""
    zone = zone or landing_zone(settings)
    checked = check(settings, batch, zone, keep_good_rows)
    decision = checked["decision"]
    if decision == "curate":
        return {"decision": decision, **curate(settings, checked, zone)}
    if decision == "quarantine":
        return {"decision": decision, **quarantine(settings, checked, zone)}
    if decision == "duplicate":
        return {"decision": decision, **skip_duplicate(settings, checked, zone)}
    return checked


def ingest_given(settings: Settings, batch: Path, keep_good_rows: bool = False) -> bool:
    """`moodloop curate PATH`: these steps on a batch given by path, copied to archive/ or
    quarantine/, never moved. Prints what happened; False when nothing could be curated."""
    if not batch.exists():
        print(f"error: {batch} does not exist", file=sys.stderr)
        return False
    zone = GivenBatch(batch, settings.archive_dir, settings.quarantine_dir)
    outcome = ingest(settings, batch.name, zone, keep_good_rows=keep_good_rows)
    if outcome["decision"] == "quarantine":
        print(
            f"error: {batch} breaks the data contract; a copy and its REPORT.md are in {outcome['quarantined']}. "
            "Fix it, or pass --keep-good-rows to curate its usable faces anyway.",
            file=sys.stderr,
        )
        return False
    if outcome["decision"] == "duplicate":
        return True
    if outcome["span"] is None:
        print(f"no new faces: all {outcome['duplicates']} were curated before (content hash)")
    else:
        print(
            f"curated span {outcome['span']}{' IN PART' if outcome['partial'] else ''}: {outcome['written']} faces, "
            f"{outcome['duplicates']} duplicates skipped; the batch is copied to {outcome['archived']}"
        )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.ingest", description="Ingest a batch given by path (what `moodloop curate` runs)."
    )
    parser.add_argument("batch", type=Path, help="fer2013.csv, an image folder tree, or a folder with labels.csv")
    parser.add_argument("--keep-good-rows", action="store_true", help="curate a failed batch's usable faces")
    args = parser.parse_args(argv)
    console.show_progress()
    return 0 if ingest_given(Settings.from_env(), args.batch, args.keep_good_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
