"""Admission control: requests in flight bounded by their number and by their cost, and a bounded queue in front.

A request's cost is the most tokens it may generate (best_of × max_tokens for a completion, where one candidate
is sampled at temperature 0; 0 for `/classify`, which generates none). It runs once it finds a free slot
(`max_in_flight`) and its cost fits in what the requests in flight leave of the token budget (`max_tokens`), so
best_of 32 × max_tokens 512 holds 64 times what best_of 2 × 128 holds, not one slot like it. Waiting requests
are admitted in arrival order: a large one at the head is not overtaken by the small ones behind it, so it is
never starved. A request that finds the queue full is refused at once with 429 and Retry-After, so an overload
shows up as fast refusals instead of an unbounded queue and timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from server.errors import APIError
from server.metrics import Metrics


async def _plain(work: Awaitable[Any]) -> Any:
    return await work


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, max_tokens: int, retry_after_s: int, metrics: Metrics):
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_tokens = max_tokens
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0
        self.tokens = 0
        """The cost of the requests in flight, together."""
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        metrics.inflight_budget.set(max_tokens)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def refusal(self, why: str) -> APIError:
        """The 429 of an overload, with Retry-After."""
        return APIError(429, f"{why}; retry later", code="queue_full", headers={"Retry-After": str(self.retry_after_s)})

    def _fits(self, cost: int) -> bool:
        return self.in_flight < self.max_in_flight and self.tokens + cost <= self.max_tokens

    def _publish(self) -> None:
        self.metrics.in_flight.set(self.in_flight)
        self.metrics.inflight_tokens.set(self.tokens)
        self.metrics.queued.set(len(self._waiters))

    def _take(self, cost: int) -> None:
        self.in_flight += 1
        self.tokens += cost
        self._publish()

    def _give_back(self, cost: int) -> None:
        self.in_flight -= 1
        self.tokens -= cost
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Admit the waiting requests in arrival order, for as long as the first one fits."""
        while self._waiters:
            cost, admitted = self._waiters[0]
            if not admitted.done():  # else it gave up (cancelled): it only leaves the line
                if not self._fits(cost):
                    break
                self._take(cost)
                admitted.set_result(None)
            self._waiters.popleft()
        self._publish()

    async def _queue(self, cost: int, wait: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        """Wait in line until `_admit_waiting` lets this request in, or leave the line if the wait is cancelled."""
        entry: tuple[int, asyncio.Future[None]] = (cost, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        self._publish()
        try:
            await wait(entry[1])
        except BaseException:  # cancelled: the client went away, or its deadline passed
            if entry[1].done() and not entry[1].cancelled():  # let in just as it gave up: hand the slot on
                self._give_back(cost)
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._admit_waiting()  # it may have been the head that held the others back
            raise

    @asynccontextmanager
    async def slot(self, wait: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None, *,
                   cost: int = 0) -> AsyncIterator[float]:
        """Hold one slot and `cost` tokens of the budget for the block; yields the seconds spent waiting for them.

        `wait` wraps the wait (e.g. to give up when the client disconnects while queued). `cost` must be within
        the budget: a request that could never run is the caller's to refuse (400), not this queue's. Whether the
        request runs, waits or is refused is settled before the first await, so a burst sees the true counts.
        """
        if cost > self.max_tokens:
            raise ValueError(f"a cost of {cost} tokens exceeds the whole budget of {self.max_tokens}")
        started = time.perf_counter()
        if self._waiters or not self._fits(cost):
            if len(self._waiters) >= self.max_queue:
                raise self.refusal(f"the server is at capacity ({self.in_flight} requests in flight holding "
                                   f"{self.tokens} of {self.max_tokens} tokens, {len(self._waiters)} queued)")
            await self._queue(cost, wait or _plain)
        else:
            self._take(cost)
        try:
            yield time.perf_counter() - started
        finally:
            self._give_back(cost)
