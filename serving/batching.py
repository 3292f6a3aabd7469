"""Dynamic batching for the embedded backend, configured by TF Serving's batching parameters file.

Concurrent requests for the same model version and signature wait up to `batch_timeout_micros`
to be merged into one model call of at most `max_batch_size` rows, as TF Serving's
`--enable_batching` does: one call of 32 rows costs far less than 32 calls of one row.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Tensors = dict[str, np.ndarray]

log = logging.getLogger("moodloop.serving")


@dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = 64
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2

    @classmethod
    def read(cls, path: Path) -> BatchingParameters:
        """Parse TF Serving's text format (`max_batch_size { value: 64 }` ...); absent file = defaults."""
        path = Path(path)
        if not path.exists():
            return cls()
        values = {}
        for name, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}", path.read_text()):
            if name in cls.__dataclass_fields__:
                values[name] = int(value)
        return cls(**values)


class QueueFullError(RuntimeError):
    """More requests are waiting than max_enqueued_batches allows (TF Serving: RESOURCE_EXHAUSTED)."""


class BatcherClosedError(RuntimeError):
    """The model version behind this batcher was unloaded; resolve the version again."""


@dataclass
class _Item:
    inputs: Tensors
    rows: int
    future: Future


def _shape_key(inputs: Tensors) -> tuple | None:
    """What calls must share to be merged; None for a call that runs alone: a scalar input has no
    rows to merge along, and inputs of different lengths no common rows (TF Serving, unbatched,
    leaves both to the model)."""
    if any(np.ndim(value) == 0 for value in inputs.values()) or len({len(v) for v in inputs.values()}) > 1:
        return None
    return tuple((name, value.shape[1:], value.dtype.str) for name, value in sorted(inputs.items()))


class DynamicBatcher:
    """Merge concurrent calls of `run` along the first dimension; each caller gets its own rows back."""

    def __init__(
        self,
        run: Callable[[Tensors], Tensors],
        params: BatchingParameters,
        on_batch: Callable[[int], None] | None = None,
        name: str = "batcher",
        merge: bool = True,
    ) -> None:
        """`merge=False` for a signature whose outputs have no batch dimension to split: each call
        then runs alone, still bounded by the queue and the batching threads."""
        self._run = run
        self._name = name
        self._merge = merge
        self._params = params
        self._on_batch = on_batch or (lambda rows: None)
        self._limit = params.max_enqueued_batches * params.max_batch_size
        self._queue: queue.Queue[_Item | None] = queue.Queue()  # bounded by submit(); sentinels always fit
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, params.num_batch_threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Tensors, timeout: float | None = 60.0) -> Tensors:
        """Raises QueueFullError, BatcherClosedError, TimeoutError, or the model's own error."""
        rows = max((len(v) if np.ndim(v) else 1 for v in inputs.values()), default=1)
        item = _Item(inputs, rows, Future())
        with self._lock:  # an item is either queued before the closing sentinels, or refused
            if self._closed:
                raise BatcherClosedError("this model version was unloaded")
            if self._queue.qsize() >= self._limit:
                raise QueueFullError("the batching queue is full; retry later")
            self._queue.put_nowait(item)
        return item.future.result(timeout)

    def close(self, wait_seconds: float = 0.0) -> bool:
        """Refuse new requests, let queued ones finish, then stop the threads. With `wait_seconds`,
        wait that long for them to finish -> whether they all did."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put_nowait(None)
        deadline = time.monotonic() + wait_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()) if wait_seconds else 0)
        return not any(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        while True:
            try:
                if not self._serve_batches():
                    return
            except Exception:
                # A bug here must cost one batch, never the signature: the thread goes on.
                log.exception("%s: batching thread error; it goes on", self._name)

    def _serve_batches(self) -> bool:
        """Form and run batches until the closing sentinel (-> False)."""
        carry: _Item | None = None
        while True:
            first = carry or self._queue.get()
            carry = None
            if first is None:
                return False
            batch, rows = [first], first.rows
            key = _shape_key(first.inputs) if self._merge else None
            deadline = time.monotonic() + self._params.batch_timeout_micros / 1e6
            while key is not None and rows < self._params.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # closing: finish this batch, then stop
                    self._queue.put(None)
                    break
                if _shape_key(item.inputs) != key or rows + item.rows > self._params.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._execute(batch, rows)

    def _execute(self, batch: list[_Item], rows: int) -> None:
        """Run one merged call and hand each caller its rows; any error fails only the callers it
        concerns (the model's error for a lone caller; a merged batch is retried one by one)."""
        try:
            if len(batch) == 1:
                outputs = self._run(batch[0].inputs)
                self._on_batch(rows)
                _resolve(batch[0].future, result=outputs)  # a lone caller's outputs as the model gave them
                return
            merged = {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}
            outputs = self._run(merged)
            unsplittable = [n for n, v in outputs.items() if np.ndim(v) == 0 or len(v) != rows]
            if unsplittable:
                raise ValueError(f"output(s) {', '.join(unsplittable)} do not have one row per input row")
            self._on_batch(rows)
        except Exception as error:  # noqa: BLE001 - the waiting callers get the model's error
            if len(batch) > 1:  # one caller's bad input must not fail the others batched with it
                for item in batch:
                    self._execute([item], item.rows)
                return
            _resolve(batch[0].future, error=error)
            return
        start = 0
        for item in batch:
            _resolve(item.future, result={name: value[start : start + item.rows] for name, value in outputs.items()})
            start += item.rows


def _resolve(future: Future, result: Tensors | None = None, error: BaseException | None = None) -> None:
    """Set a caller's answer once (a caller whose deadline passed has stopped waiting: no matter)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
