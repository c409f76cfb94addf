"""Dynamic micro-batching for the reward model, across concurrent requests.

One asyncio worker takes the oldest waiting job (one request's candidates), then keeps adding jobs until the
batch holds `max_batch` items or `max_wait_s` has passed since it started, runs one forward pass in a worker
thread, and resolves each job's future with its slice of the scores (whatever the scoring function returns per
item). A job is never split: one larger than `max_batch` runs alone. While a forward pass runs, new jobs queue
up, so batches grow with load by themselves.
A job whose caller went away (its future cancelled) is dropped before it is scored.

One job's failure is its own: `check` runs on every result and a job with a result it rejects gets that error
while the rest of its batch gets their scores; when scoring a batch raises (one item too long, say), each of
its jobs is scored again alone, so only the job that raises hears about it. At most `max_pending` items wait;
a job that would exceed it is refused at once (`BatcherFull`), so a flood costs refusals, not memory.

The worker survives a scoring function that fails; should it die anyway (an exception that is not an `Exception`,
such as a `CancelledError` out of a scoring function running an event loop of its own), the jobs of the batch it
was scoring fail and it is started again, with the jobs still waiting. One that dies `max_restarts` times within
`restart_window_s` is not started again: `failure` says why, and every job fails from then on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from models.interface import BackendError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherFull(RuntimeError):
    """`max_pending` items are already waiting for the scoring function."""


@dataclass
class _Job(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[list[R]]


def _fail(job: _Job[T, R], exc: Exception) -> None:
    if not job.future.done():  # its caller may have gone meanwhile
        job.future.set_exception(exc)


class MicroBatcher(Generic[T, R]):
    def __init__(self, score: Callable[[list[T]], list[R]], *, max_batch: int, max_wait_s: float, max_pending: int,
                 on_batch: Callable[[int, float], None] | None = None, check: Callable[[R], None] | None = None,
                 on_restart: Callable[[], None] | None = None, max_restarts: int = 5, restart_window_s: float = 60.0):
        if max_batch < 1 or max_wait_s < 0 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be positive and max_wait_s non-negative")
        self._score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._on_batch = on_batch
        self._check = check
        self._on_restart = on_restart
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.failure: str | None = None
        """Why the worker is down for good (it died `max_restarts` times in `restart_window_s`); None while it runs."""
        self._batch: list[_Job[T, R]] = []
        """The jobs of the batch being scored, which a worker that dies leaves to fail."""
        self._pending: collections.deque[_Job[T, R]] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._supervise(), name="rm-micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the reward model was shut down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, items: Sequence[T]) -> list[R]:
        """Scores of `items`, in order, computed together with whatever else is waiting."""
        if not items:
            return []
        if self.failure is not None:
            raise self._down()
        if self._worker is None or self._worker.done():
            raise RuntimeError("the micro-batcher is not running")
        waiting = sum(len(j.items) for j in self._pending if not j.future.done())
        if waiting + len(items) > self.max_pending:
            raise BatcherFull(f"{waiting} items are waiting for the reward model (at most {self.max_pending})")
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _wait_for_job(self, timeout: float | None) -> bool:
        """Wait until a job is pending (True) or the timeout passes (False)."""
        while not self._pending:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return bool(self._pending)
        return True

    def _next_live_job(self) -> _Job[T, R] | None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # its caller is gone
        return self._pending[0] if self._pending else None

    async def _collect(self) -> list[_Job[T, R]]:
        await self._wait_for_job(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        batch: list[_Job[T, R]] = []
        size = 0
        while size < self.max_batch:
            job = self._next_live_job()
            if job is None:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._wait_for_job(remaining):
                    break
                continue
            if batch and size + len(job.items) > self.max_batch:
                break
            batch.append(self._pending.popleft())
            size += len(job.items)
        return batch

    async def _supervise(self) -> None:
        """Run the worker, and start it again each time it dies, up to `max_restarts` times in `restart_window_s`."""
        deaths: collections.deque[float] = collections.deque()
        while True:
            try:
                await self._run()  # it never returns: it loops until it raises
            except BaseException as exc:
                task = asyncio.current_task()
                if isinstance(exc, KeyboardInterrupt | SystemExit) or (task is not None and task.cancelling()):
                    raise  # stop() cancelled it, or the process is going
                why = f"{type(exc).__name__}: {exc}"
                for job in self._batch:
                    _fail(job, BackendError(f"the reward model's worker died while scoring ({why})", "reward"))
                now = time.monotonic()
                deaths.append(now)
                while deaths[0] < now - self.restart_window_s:
                    deaths.popleft()
                if len(deaths) > self.max_restarts:
                    self._give_up(f"its worker died {len(deaths)} times in {self.restart_window_s:g} s, last: {why}")
                    return
                log.error("the reward model's micro-batcher worker died (%s); starting it again", why, exc_info=exc)
                if self._on_restart is not None:
                    self._on_restart()

    def _give_up(self, failure: str) -> None:
        """Down for good: every job waiting now or submitted later fails with `failure`."""
        self.failure = failure
        log.error("%s", self._down())
        while self._pending:
            _fail(self._pending.popleft(), self._down())

    def _down(self) -> BackendError:
        return BackendError(f"the reward model's micro-batcher is down: {self.failure}", "reward")

    async def _run(self) -> None:
        while True:
            jobs = [j for j in await self._collect() if not j.future.done()]
            self._batch = jobs
            if not jobs:
                continue
            try:
                await self._forward(jobs)
            except Exception as exc:  # the worker carries on; scored alone, each job finds out whether it failed
                if len(jobs) == 1:
                    _fail(jobs[0], exc)
                    continue
                for job in jobs:
                    if job.future.done():
                        continue
                    try:
                        await self._forward([job])
                    except Exception as alone:
                        _fail(job, alone)

    async def _forward(self, jobs: list[_Job[T, R]]) -> None:
        """Score `jobs` in one call and resolve each with its slice, or with `check`'s error on a result of its
        own; raises what the scoring raised, resolving none."""
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        scores = await asyncio.get_running_loop().run_in_executor(self._executor, self._score, items)
        if len(scores) != len(items):
            raise RuntimeError(f"the reward model returned {len(scores)} scores for {len(items)} items")
        if self._on_batch is not None:
            self._on_batch(len(items), time.perf_counter() - started)
        offset = 0
        for job in jobs:
            mine = list(scores[offset : offset + len(job.items)])
            offset += len(job.items)
            if job.future.done():
                continue
            try:
                if self._check is not None:
                    for score in mine:
                        self._check(score)
            except Exception as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(mine)
