"""The inference-log contract's records: what one prediction and one feedback label look like in
the inference log (moodloop/contracts.py names the columns), and the log's one reader. The
gateway writes them (serving/inference_log.py); the A/B gate writes the reference profile in the
same shape, so that the drift job compares like with like; the canary analysis and the drift job
read them back with `read_log`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from moodloop.contracts import EMOTIONS, LOG_EMBEDDING_COLUMNS, LOG_PREDICTIONS, LOG_PROBABILITY_COLUMNS
from moodloop.image_properties import decode_grey, image_properties


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
FEEDBACK_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("instance", pa.int32()),
        ("label", pa.string()),
    ]
)


def read_log(log_url: str | Path, kind: str = LOG_PREDICTIONS, since: datetime | float | None = None) -> pa.Table:
    """The records of one kind (LOG_PREDICTIONS or LOG_FEEDBACK) under a local inference log, in
    time order; with `since` (a datetime or a Unix time), only those after it. Files being written
    (hidden names) are skipped. Empty table when there is none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if str(log_url).startswith("s3://"):
        raise NotImplementedError("the monitoring jobs read a local inference log; sync the S3 prefix first")
    root = Path(log_url) / kind
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(".")) if root.is_dir() else []
    tables = [pq.read_table(f) for f in files]
    if not tables:
        return pa.table({})
    if all(t.schema.equals(tables[0].schema) for t in tables):
        table = pa.concat_tables(tables)
    else:  # files from before a column was added: pandas aligns the columns, nulls where one is missing
        import pandas as pd

        frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
    if since is not None:
        cutoff = since if isinstance(since, datetime) else datetime.fromtimestamp(float(since), timezone.utc)
        table = table.filter(
            pc.greater(table["timestamp"], pa.scalar(cutoff, type=table.schema.field("timestamp").type))
        )
    return table.take(pc.sort_indices(table, sort_keys=[("timestamp", "ascending")]))
