"""Admission control: a bounded number of requests in flight and a bounded queue in front of them.

A request that finds every slot taken and the queue full is refused at once with 429 and Retry-After, so an
overload shows up as fast refusals instead of an unbounded queue and timeouts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from server.errors import APIError
from server.metrics import Metrics


async def _plain(work: Awaitable[Any]) -> Any:
    return await work


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, retry_after_s: int, metrics: Metrics):
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_in_flight)

    def refusal(self, why: str) -> APIError:
        """The 429 of an overload, with Retry-After."""
        return APIError(429, f"{why}; retry later", code="queue_full", headers={"Retry-After": str(self.retry_after_s)})

    @asynccontextmanager
    async def slot(self, wait: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None) -> AsyncIterator[float]:
        """Hold one slot for the block; yields the seconds spent waiting for it.

        `wait` wraps the wait for a slot (e.g. to give up when the client disconnects while queued).
        """
        if self.in_flight + self.waiting >= self.max_in_flight + self.max_queue:
            raise self.refusal(f"the server is at capacity ({self.max_in_flight} requests in flight, "
                               f"{self.max_queue} queued)")
        started = time.perf_counter()
        self.waiting += 1
        self.metrics.queued.inc()
        try:
            await (wait or _plain)(self._slots.acquire())
        finally:
            self.waiting -= 1
            self.metrics.queued.dec()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield time.perf_counter() - started
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self._slots.release()
