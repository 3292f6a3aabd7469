"""The inference-log contract's records: what one prediction and one feedback label look like in
the inference log (moodloop/core/contracts.py names the columns), and the log's one reader. The
gateway writes them (serving/inference_log.py); the A/B gate writes the reference profile in the
same shape, so that the drift job compares like with like; the canary analysis and the drift job
read them back with `read_log`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from moodloop.core.contracts import (
    EMOTIONS,
    FACE_SIZE,
    LOG_EMBEDDING_COLUMNS,
    LOG_PREDICTIONS,
    LOG_PROBABILITY_COLUMNS,
)
from moodloop.core.image_properties import decode_grey, image_properties


@dataclass
class Prediction:
    """What a request knows; the writer thread turns it into a log row."""

    request_id: str
    instance: int
    client_id: str
    model_name: str
    model_version: int
    model_label: str  # stable | canary | the label asked for | "" (a version asked for by number)
    signature: str
    api: str  # rest | grpc | faces | videos
    latency_ms: float
    probabilities: np.ndarray  # [7]
    pixels: np.ndarray | None = None  # [H, W] uint8, when the request sent pixels or a face crop
    encoded: bytes | None = None  # encoded image, when the request sent one
    face_width: float | None = None
    face_area_ratio: float | None = None
    embedding: np.ndarray | None = None  # [EMBEDDING_DIMS], when the model outputs one
    # brightness, contrast, sharpness, width, height, when the model computed them in its graph
    # (OUTPUT_IMAGE_PROPERTIES): then nothing is decoded here
    properties: dict[str, float] | None = None
    timestamp: float = field(default_factory=time.time)


@dataclass
class Feedback:
    request_id: str
    instance: int
    label: str
    timestamp: float = field(default_factory=time.time)


def _image_columns(record: Prediction) -> dict[str, object]:
    if record.properties is not None:
        return dict(record.properties)
    pixels = record.pixels if record.pixels is not None else (decode_grey(record.encoded) if record.encoded else None)
    if pixels is None:
        return {"brightness": None, "contrast": None, "sharpness": None, "width": None, "height": None}
    return {**image_properties(pixels), "width": int(pixels.shape[1]), "height": int(pixels.shape[0])}


def prediction_row(record: Prediction) -> dict[str, object]:
    probabilities = np.asarray(record.probabilities, dtype=np.float64).reshape(-1)
    top = int(probabilities.argmax())
    return {
        "timestamp": datetime.fromtimestamp(record.timestamp, timezone.utc),
        "request_id": record.request_id,
        "instance": record.instance,
        "client_id": record.client_id,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "model_label": record.model_label,
        "signature": record.signature,
        "api": record.api,
        "latency_ms": record.latency_ms,
        "predicted_class": EMOTIONS[top] if len(probabilities) == len(EMOTIONS) else str(top),
        "confidence": float(probabilities[top]),
        **{c: float(p) for c, p in zip(LOG_PROBABILITY_COLUMNS, probabilities, strict=False)},
        **_image_columns(record),
        "face_width": record.face_width,
        "face_area_ratio": record.face_area_ratio,
        **embedding_columns(record.embedding),
    }


def face_row(record: Prediction) -> dict[str, object] | None:
    """The live-face sample's row (LOG_FACES): the face as the model saw it, a 48x48 grey PNG, with
    the answer it got. None when the request carried no image (tf.Examples)."""
    pixels = record.pixels if record.pixels is not None else (decode_grey(record.encoded) if record.encoded else None)
    if pixels is None:
        return None
    face = Image.fromarray(np.asarray(pixels, dtype=np.uint8).reshape(np.shape(pixels)[:2]), mode="L")
    if face.size != (FACE_SIZE, FACE_SIZE):
        face = face.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
    png = io.BytesIO()
    face.save(png, format="PNG")
    probabilities = np.asarray(record.probabilities, dtype=np.float64).reshape(-1)
    return {
        "timestamp": datetime.fromtimestamp(record.timestamp, timezone.utc),
        "request_id": record.request_id,
        "instance": record.instance,
        "model_version": record.model_version,
        "face_png": png.getvalue(),
        **{c: float(p) for c, p in zip(LOG_PROBABILITY_COLUMNS, probabilities, strict=False)},
        **embedding_columns(record.embedding),
    }


def embedding_columns(embedding: np.ndarray | None) -> dict[str, float | None]:
    values = list(np.asarray(embedding, dtype=np.float64).reshape(-1)) if embedding is not None else []
    return {c: (float(values[i]) if i < len(values) else None) for i, c in enumerate(LOG_EMBEDDING_COLUMNS)}


PREDICTION_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("instance", pa.int32()),
        ("client_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("model_label", pa.string()),
        ("signature", pa.string()),
        ("api", pa.string()),
        ("latency_ms", pa.float64()),
        ("predicted_class", pa.string()),
        ("confidence", pa.float64()),
        *[(c, pa.float64()) for c in LOG_PROBABILITY_COLUMNS],
        ("brightness", pa.float64()),
        ("contrast", pa.float64()),
        ("sharpness", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("face_width", pa.float64()),
        ("face_area_ratio", pa.float64()),
        *[(c, pa.float64()) for c in LOG_EMBEDDING_COLUMNS],
    ]
)
FACE_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("instance", pa.int32()),
        ("model_version", pa.int64()),
        ("face_png", pa.binary()),
        *[(c, pa.float64()) for c in LOG_PROBABILITY_COLUMNS],
        *[(c, pa.float64()) for c in LOG_EMBEDDING_COLUMNS],
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("instance", pa.int32()),
        ("label", pa.string()),
    ]
)


_PARTITION_HOUR = "date=%Y-%m-%d/hour=%H"


def _utc(since: datetime | float | None) -> datetime | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(since), timezone.utc)


def _files_after(root: Path, cutoff: datetime | None) -> list[Path]:
    """Finished Parquet files (not hidden: being written) of the hour partitions that can hold
    records after `cutoff`: older hours are skipped by their folder name, never opened."""
    files = []
    for day in sorted(root.glob("date=*")):
        for hour in sorted(day.glob("hour=*")):
            try:
                start = datetime.strptime(f"{day.name}/{hour.name}", _PARTITION_HOUR).replace(tzinfo=timezone.utc)
            except ValueError:
                start = None  # not a partition moodloop wrote: read it
            if cutoff is not None and start is not None and start + timedelta(hours=1) <= cutoff:
                continue
            files += sorted(p for p in hour.glob("*.parquet") if not p.name.startswith("."))
    return files


def _timestamp_range(path: Path) -> tuple[int, int] | None:
    """(first, last) timestamp of a file from its footer statistics (ms), None when it has none."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    if "timestamp" not in names or metadata.num_row_groups == 0:
        return None
    column = names.index("timestamp")
    ranges = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        low, high = stats.min, stats.max
        ranges.append((_millis(low), _millis(high)))
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _millis(value) -> int:
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    return int(value)


def read_log(
    log_url: str | Path,
    kind: str = LOG_PREDICTIONS,
    since: datetime | float | None = None,
    limit: int | None = None,
) -> pa.Table:
    """The records of one kind (LOG_PREDICTIONS, LOG_FEEDBACK or LOG_FACES) under a local inference log, in
    time order; with `since` (a datetime or a Unix time), only those after it; with `limit`, only
    the first `limit` of those. Files being written (hidden names) are skipped. Empty table when
    there is none.

    The cost follows what is asked, not how much was logged before it: hour partitions older than
    `since` are skipped by name, files are picked by the timestamp range in their footers, and
    with `limit` reading stops once no unread file can hold an earlier record."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if str(log_url).startswith("s3://"):
        raise NotImplementedError("the monitoring jobs read a local inference log; sync the S3 prefix first")
    root = Path(log_url) / kind
    cutoff = _utc(since)
    cutoff_ms = _millis(cutoff) if cutoff is not None else None
    candidates = []
    ranged = cutoff is not None or limit is not None  # else every file is read whole: no footer needed
    for path in _files_after(root, cutoff) if root.is_dir() else []:
        span = _timestamp_range(path) if ranged else None
        if span is not None and cutoff_ms is not None and span[1] <= cutoff_ms:
            continue  # every record in it is at or before `since`
        candidates.append((span[0] if span else -1, path))
    candidates.sort(key=lambda item: item[0])
    tables, kept, kth = [], 0, None
    for first, path in candidates:
        if limit is not None and kth is not None and first > kth:
            break  # this file and every later one start after the `limit` earliest records so far
        table = pq.read_table(path)
        if cutoff is not None:
            table = table.filter(
                pc.greater(table["timestamp"], pa.scalar(cutoff, type=table.schema.field("timestamp").type))
            )
        tables.append(table)
        kept += table.num_rows
        if limit is not None and kept >= limit:
            stamps = np.concatenate([t["timestamp"].cast(pa.int64()).to_numpy() for t in tables])
            kth = int(np.partition(stamps, limit - 1)[limit - 1])
    if not tables:
        return pa.table({})
    if all(t.schema.equals(tables[0].schema) for t in tables):
        table = pa.concat_tables(tables)
    else:  # files from before a column was added: pandas aligns the columns, nulls where one is missing
        import pandas as pd

        frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
    ordered = table.take(pc.sort_indices(table, sort_keys=[("timestamp", "ascending")]))
    return ordered.slice(0, limit) if limit is not None else ordered
