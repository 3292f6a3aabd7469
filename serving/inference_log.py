"""The inference log (the inference-log contract in moodloop/core/contracts.py): one record per classified image.

Requests hand records to a bounded queue and return; a background thread computes the image
properties, and writes Parquet files per hour partition, to a local folder or to S3 (boto3).
Logging never blocks or fails a request: when the queue is full the record is dropped and
counted (`dropped`, exported as a Prometheus counter). `close()` flushes what is queued.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moodloop.core.contracts import LOG_FACES, LOG_FEEDBACK, LOG_PREDICTIONS
from moodloop.core.files import atomic_write_bytes
from moodloop.core.log_records import (
    FACE_SCHEMA,
    FEEDBACK_SCHEMA,
    PREDICTION_SCHEMA,
    Feedback,
    Prediction,
    face_row,
    prediction_row,
)

log = logging.getLogger("moodloop.serving.log")


class _Sink:
    """Where Parquet files go: a local folder (atomic rename) or an S3 prefix (one PUT per file)."""

    def __init__(self, url: str, s3_client_factory=None) -> None:
        self.url = url
        if url.startswith("s3://"):
            bucket, _, prefix = url[5:].partition("/")
            self._bucket, self._prefix = bucket, prefix.strip("/")
            self._s3 = s3_client_factory() if s3_client_factory else None
        else:
            self._root = Path(url)

    def put(self, relative: str, data: bytes) -> str:
        if self.url.startswith("s3://"):
            key = f"{self._prefix}/{relative}" if self._prefix else relative
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=data)
            return f"s3://{self._bucket}/{key}"
        return str(atomic_write_bytes(self._root / relative, data))


class InferenceLog:
    """Bounded, batched, never-blocking writer of predictions and feedback."""

    def __init__(
        self,
        url: str,
        buffer_records: int = 20000,
        flush_seconds: float = 5.0,
        flush_records: int = 2000,
        s3_client_factory=None,
        faces_per_hour: int = 0,
    ) -> None:
        """`faces_per_hour` > 0 keeps the live-face sample (LOG_FACES): each predicted face's 48x48
        PNG, at most that many per hour partition (counted per process: a restart starts the count
        again); the rest are counted in `faces_not_kept`."""
        self.sink = _Sink(url, s3_client_factory)
        self.faces_per_hour = faces_per_hour
        self._faces_by_hour: dict[str, int] = {}
        self.faces_not_kept = 0
        self.faces_written = 0
        self.flush_seconds = flush_seconds
        # The bound covers every record held in memory: queued or waiting in the writer for a flush.
        self.buffer_records = buffer_records
        self.flush_records = min(flush_records, max(1, buffer_records // 2))
        self._queue: queue.Queue[Prediction | Feedback | None] = queue.Queue()
        self._held = 0
        self._held_lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.sink_failing = False
        self._unwritten: dict[tuple[str, str], list[dict]] = {}  # rows a failed write kept, by file
        self._thread = threading.Thread(target=self._loop, name="inference-log", daemon=True)
        self._thread.start()

    def log(self, record: Prediction | Feedback) -> bool:
        """Queue a record; False (and counted in `dropped`) when the buffer is full."""
        with self._held_lock:
            if self._held >= self.buffer_records:
                self.dropped += 1
                return False
            self._held += 1
        self._queue.put_nowait(record)
        return True

    def buffered(self) -> int:
        return self._held

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        pending: list[Prediction | Feedback] = []
        last_flush = time.monotonic()
        while True:
            wait = max(0.05, self.flush_seconds - (time.monotonic() - last_flush))
            try:
                record = self._queue.get(timeout=wait)
            except queue.Empty:
                record = ...
            if record is None:
                self._release(self._flush_safely(pending))
                if self._unwritten:  # the sink never came back: these are lost, and counted
                    lost = sum(len(rows) for rows in self._unwritten.values())
                    self.write_errors += lost
                    log.error(f"inference log: {lost} records could not be written before shutdown ({self.sink.url})")
                return
            if record is not ...:
                pending.append(record)
            if len(pending) >= self.flush_records or time.monotonic() - last_flush >= self.flush_seconds:
                self._release(self._flush_safely(pending))
                pending = []
                last_flush = time.monotonic()

    def _flush_safely(self, records: list[Prediction | Feedback]) -> int:
        try:
            return self._flush(records)
        except Exception:  # the writer thread must live on; these records are counted lost
            log.exception("inference log: flush failed")
            self.write_errors += len(records)
            return len(records)

    def _keep_face(self, record: Prediction, hour: str, groups: dict) -> None:
        """Add the record's face to the live-face sample while this hour has room."""
        if self.faces_per_hour <= 0:
            return
        if self._faces_by_hour.get(hour, 0) >= self.faces_per_hour:
            self.faces_not_kept += 1
            return
        try:
            row = face_row(record)
        except Exception:  # noqa: BLE001 - a face that cannot be kept never costs its prediction's row
            row = None
        if row is None:
            self.faces_not_kept += 1
            return
        self._faces_by_hour = {h: n for h, n in self._faces_by_hour.items() if h >= hour}  # older hours are done
        self._faces_by_hour[hour] = self._faces_by_hour.get(hour, 0) + 1
        groups.setdefault((LOG_FACES, hour), []).append(row)

    def _release(self, count: int) -> None:
        with self._held_lock:
            self._held -= count

    def _flush(self, records: list[Prediction | Feedback]) -> int:
        """Write the records, and those a failed write kept (S3 down): they stay in memory, within
        the buffer's bound, and are written by a later flush. -> how many records left memory
        (written, or not convertible to a row: counted in write_errors)."""
        done = 0
        groups, self._unwritten = self._unwritten, {}
        for record in records:
            try:
                if isinstance(record, Prediction):
                    kind, row = LOG_PREDICTIONS, prediction_row(record)
                    self._keep_face(record, row["timestamp"].strftime("date=%Y-%m-%d/hour=%H"), groups)
                else:
                    kind, row = LOG_FEEDBACK, {**record.__dict__}
                    row["timestamp"] = datetime.fromtimestamp(record.timestamp, timezone.utc)
            except Exception:
                log.exception("inference log: could not turn a record into a row")
                self.write_errors += 1
                done += 1
                continue
            hour = row["timestamp"].strftime("date=%Y-%m-%d/hour=%H")
            groups.setdefault((kind, hour), []).append(row)
        for (kind, hour), rows in groups.items():
            schema = {LOG_PREDICTIONS: PREDICTION_SCHEMA, LOG_FACES: FACE_SCHEMA}.get(kind, FEEDBACK_SCHEMA)
            name = f"{kind}/{hour}/part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                buffer = io.BytesIO()
                pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="snappy")
                self.sink.put(name, buffer.getvalue())
            except Exception as error:  # noqa: BLE001 - kept for the next flush, and said once per outage
                self._unwritten[(kind, hour)] = rows
                if not self.sink_failing:
                    log.error(f"inference log: cannot write to {self.sink.url} ({error}); keeping the records")
                self.sink_failing = True
                continue
            if self.sink_failing:
                log.info(f"inference log: {self.sink.url} is back; the kept records are written")
            self.sink_failing = False
            if kind == LOG_FACES:  # copies of faces whose predictions are counted: not held records
                self.faces_written += len(rows)
                continue
            self.written += len(rows)
            done += len(rows)
        return done
