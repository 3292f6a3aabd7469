"""Who may come in, and how much: admission control that counts work, not waiting (WorkSlots),
per-client rates (RateLimiter) and bearer tokens (bearer_matches), for both transports.

At most `workers` requests' work runs at once, each on a thread of the gateway's own pool; at most
`queue` more wait for a slot in the event loop (holding no thread); any request beyond that is
refused at once with RESOURCE_EXHAUSTED (429) instead of piling up. A request whose deadline passes
is answered DEADLINE_EXCEEDED (504), but its work cannot be stopped mid-call (a TensorFlow call, a
video decode), so it keeps its slot until its thread ends: timed-out work still counts, and the
number of threads never grows past `workers` however many clients give up and retry.
(Starlette's run_in_threadpool freed its slot when the awaiting request was cancelled: three waves
of 40 timed-out calls left 121 threads working.)

The gRPC surface gets the same from grpc itself: a pool of `workers` threads and
`maximum_concurrent_rpcs` (serving/grpc_api.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from serving.backends import ServingError


class WorkSlots:
    def __init__(self, workers: int, queue: int, name: str = "rest-work") -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"workers {workers} must be >= 1 and queue {queue} >= 0")
        self.workers, self.queue = workers, queue
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._running = 0  # work submitted and not ended (timed-out work included)
        self._waiting = 0  # requests waiting for a slot
        self._slot_freed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> int:
        return self._running

    def _freed(self, _: concurrent.futures.Future) -> None:
        with self._lock:
            self._running -= 1
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def run(self, function: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """`function(*args)` on a worker thread; ServingError RESOURCE_EXHAUSTED when the server is
        full, DEADLINE_EXCEEDED when the answer is not ready within `timeout` seconds (waiting for a
        slot included)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call (uvicorn runs one loop per server)
            self._loop, self._slot_freed = loop, asyncio.Event()
        deadline = loop.time() + timeout
        if self._running >= self.workers and self._waiting >= self.queue:
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"the server is busy ({self.workers} requests working, {self._waiting} waiting); retry later",
            )
        self._waiting += 1
        try:
            while self._running >= self.workers:
                self._slot_freed.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ServingError("DEADLINE_EXCEEDED", f"Deadline Exceeded ({timeout:g} s, waiting for a slot)")
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), remaining)
                except asyncio.TimeoutError:
                    continue
        finally:
            self._waiting -= 1
        with self._lock:
            self._running += 1
        future = self._executor.submit(function, *args)
        future.add_done_callback(self._freed)
        try:
            # shield: a cancelled wait must not cancel the future (the slot is freed when it ends)
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), deadline - loop.time())
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", f"Deadline Exceeded ({timeout:g} s)") from None

    def close(self, wait: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute on average, in bursts of up to
    `per_minute`. The clients remembered are bounded (`max_clients`, least recently seen dropped
    first), so a flood of addresses cannot grow it without end."""

    def __init__(self, per_minute: float, max_clients: int = 10_000, clock: Callable[[], float] | None = None) -> None:
        self.per_minute = float(per_minute)
        self.max_clients = max_clients
        self._clock = clock or time.monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Take one request from the client's bucket; False when it is empty (answer 429)."""
        return self.take(client) == 0.0

    def take(self, client: str) -> float:
        """Take one request from the client's bucket: 0.0 when allowed, else the seconds until the
        bucket holds one again (a 429's Retry-After, RFC 9110 section 10.2.3)."""
        if self.per_minute <= 0:
            return 0.0  # no limit
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.pop(client, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - when) * self.per_minute / 60.0)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) * 60.0 / self.per_minute


def bearer_matches(authorization: str, token: str) -> bool:
    """An `Authorization` header (REST) or `authorization` metadata (gRPC) value holds `token` as
    `Bearer <token>` (the scheme is case-blind, RFC 7235); compared in constant time."""
    scheme, _, supplied = authorization.strip().partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())
