"""Closed loop (C clients, each sends its next request when its last one answers), open loop (Poisson arrivals at
rate R, however many are in flight) and the sweep over best_of × concurrency (or rate).

Each sweep point is bounded by a request count and a duration, whichever comes first: no request is started after
the duration has passed, and the ones in flight finish (each within its own timeout), so that every request sent
is counted as answered or as an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from tqdm import tqdm

from loadtest.client import Mode, RequestRecord, RequestSpec, send


@dataclass(frozen=True)
class Point:
    """One sweep point: closed loop at `concurrency`, or open loop at `rate` requests/s when rate is set."""

    best_of: int
    concurrency: int = 1
    rate: float | None = None

    @property
    def loop(self) -> str:
        return "closed" if self.rate is None else "open"

    @property
    def label(self) -> str:
        load = f"C={self.concurrency}" if self.rate is None else f"R={self.rate:g}/s"
        return f"best_of={self.best_of} {load}"


@dataclass
class LoadConfig:
    """How to drive the server; the bounds apply to each sweep point."""

    url: str
    """Chat-completions URL, e.g. http://127.0.0.1:8000/v1/chat/completions."""
    model: str
    prompts: list[list[dict[str, str]]]
    """Chat messages, sent in turn."""
    mode: Mode = "bon"
    stream: bool = True
    max_tokens: int = 64
    temperature: float = 1.0
    ignore_eos: bool = False
    requests: int = 50
    duration: float = 30.0
    timeout: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("no prompts")
        if self.requests < 1 or self.duration <= 0 or self.timeout <= 0:
            raise ValueError("requests, duration and timeout must be positive")


@dataclass
class PointResult:
    point: Point
    records: list[RequestRecord]
    wall: float
    """Seconds from the start of the point to the last request finished."""


def _spec(config: LoadConfig, point: Point, i: int) -> RequestSpec:
    return RequestSpec(model=config.model, messages=config.prompts[i % len(config.prompts)], best_of=point.best_of,
                       mode=config.mode, stream=config.stream, max_tokens=config.max_tokens,
                       temperature=config.temperature, ignore_eos=config.ignore_eos, extra=dict(config.extra))


async def _closed(client: httpx.AsyncClient, config: LoadConfig, point: Point, t0: float,
                  done: Callable[[RequestRecord], None]) -> list[RequestRecord]:
    records: list[RequestRecord] = []

    async def worker() -> None:
        while len(records) < config.requests and time.perf_counter() - t0 < config.duration:
            record = RequestRecord(request_id=len(records), best_of=point.best_of)
            records.append(record)  # claimed before the await, so no two workers take the same slot
            await send(client, config.url, _spec(config, point, record.request_id), record, config.timeout, t0)
            done(record)

    await asyncio.gather(*(worker() for _ in range(point.concurrency)))
    return records


async def _open(client: httpx.AsyncClient, config: LoadConfig, point: Point, t0: float,
                done: Callable[[RequestRecord], None]) -> list[RequestRecord]:
    assert point.rate is not None
    rng = np.random.default_rng(config.seed)
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(record: RequestRecord) -> None:
        await send(client, config.url, _spec(config, point, record.request_id), record, config.timeout, t0)
        done(record)

    arrival = 0.0
    for i in range(config.requests):
        arrival += float(rng.exponential(1.0 / point.rate))  # Poisson process: exponential gaps
        if arrival >= config.duration:
            break
        await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
        record = RequestRecord(request_id=i, best_of=point.best_of)
        records.append(record)
        tasks.append(asyncio.create_task(one(record)))
    await asyncio.gather(*tasks)
    return records


async def run_point(client: httpx.AsyncClient, config: LoadConfig, point: Point,
                    progress: tqdm | None = None) -> PointResult:
    """Drive one sweep point to its bounds and return every request sent."""
    errors = 0

    def done(record: RequestRecord) -> None:
        nonlocal errors
        errors += not record.ok
        if progress is not None:
            progress.update(1)
            progress.set_postfix(errors=errors, refresh=False)

    t0 = time.perf_counter()
    loop = _closed if point.rate is None else _open
    records = await loop(client, config, point, t0, done)
    return PointResult(point=point, records=records, wall=time.perf_counter() - t0)


def sweep_points(best_of: Sequence[int], concurrency: Sequence[int] = (1,),
                 rates: Sequence[float] | None = None) -> list[Point]:
    """best_of × concurrency (closed loop), or best_of × rate (open loop) when rates are given."""
    if rates:
        return [Point(best_of=n, rate=r) for n in best_of for r in rates]
    return [Point(best_of=n, concurrency=c) for n in best_of for c in concurrency]


async def run_sweep(config: LoadConfig, points: Sequence[Point], show_progress: bool = True) -> list[PointResult]:
    """Run the sweep points one after another over one connection pool."""
    # Open loop must not queue in the client's pool, or the wait would hide in its latency as server time.
    most = max((p.concurrency for p in points if p.rate is None), default=1)
    limits = httpx.Limits(max_connections=None if any(p.rate for p in points) else most,
                          max_keepalive_connections=most)
    results = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.timeout), limits=limits,
                                 headers=config.headers) as client:
        for point in points:
            with tqdm(total=config.requests, desc=point.label, unit="req", disable=not show_progress,
                      leave=True) as bar:
                results.append(await run_point(client, config, point, bar))
    return results
