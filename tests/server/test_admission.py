"""Admission by count and cost (server/admission.py): who runs, who waits and in which order, who is refused,
and that a waiter who gives up neither keeps nor loses a slot."""

import asyncio

import pytest

from server.admission import Admission
from server.errors import APIError
from server.metrics import Metrics
from tests.builders import wait_until_async


def admission(max_in_flight: int = 4, max_queue: int = 4, max_tokens: int = 100) -> Admission:
    return Admission(max_in_flight, max_queue, max_tokens, retry_after_s=2, metrics=Metrics())


def gauge(a: Admission, name: str) -> float | None:
    return a.metrics.registry.get_sample_value(name)


async def hold(a: Admission, cost: int, release: asyncio.Event, admitted: list[int], tag: int) -> None:
    async with a.slot(cost=cost):
        admitted.append(tag)
        await release.wait()


def test_a_request_waits_for_its_cost_to_fit_even_with_a_slot_free_and_none_overtakes_it():
    async def scenario():
        a = admission(max_tokens=100)
        admitted: list[int] = []
        release = [asyncio.Event() for _ in range(3)]
        big = asyncio.create_task(hold(a, 80, release[0], admitted, 0))
        await wait_until_async(lambda: a.in_flight == 1)
        second = asyncio.create_task(hold(a, 30, release[1], admitted, 1))
        third = asyncio.create_task(hold(a, 10, release[2], admitted, 2))  # it would fit, but comes later
        await wait_until_async(lambda: a.waiting == 2)
        assert admitted == [0] and (a.in_flight, a.tokens) == (1, 80)
        assert (gauge(a, "bon_inflight_tokens"), gauge(a, "bon_requests_queued")) == (80, 2)
        assert gauge(a, "bon_inflight_budget_tokens") == 100
        release[0].set()
        await wait_until_async(lambda: len(admitted) == 3)
        assert admitted == [0, 1, 2] and (a.in_flight, a.tokens, a.waiting) == (2, 40, 0)
        for event in release:
            event.set()
        await asyncio.gather(big, second, third)
        assert (a.in_flight, a.tokens) == (0, 0) and gauge(a, "bon_requests_in_flight") == 0

    asyncio.run(scenario())


def test_a_full_queue_is_429_and_a_cost_over_the_whole_budget_is_refused_by_the_caller():
    async def scenario():
        a = admission(max_in_flight=1, max_queue=1)
        release, admitted = asyncio.Event(), []
        running = asyncio.create_task(hold(a, 10, release, admitted, 0))
        queued = asyncio.create_task(hold(a, 10, release, admitted, 1))
        await wait_until_async(lambda: a.waiting == 1)
        with pytest.raises(APIError) as refused:
            async with a.slot(cost=0):
                pass
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "2"}
        assert "1 requests in flight holding 10 of 100 tokens, 1 queued" in refused.value.message
        with pytest.raises(ValueError, match="exceeds the whole budget"):  # plan_request answers 400 before
            async with a.slot(cost=101):
                pass
        release.set()
        await asyncio.gather(running, queued)

    asyncio.run(scenario())


def test_a_burst_is_counted_as_it_arrives_even_when_each_wait_runs_in_a_task_of_its_own():
    """The server wraps each wait in a task (`DisconnectWatcher.until_gone`): requests arriving in one turn of the
    loop must still see each other, so that only max_in_flight + max_queue of them get in."""
    async def in_a_task(work):
        return await asyncio.ensure_future(work)

    async def one(a: Admission, release: asyncio.Event) -> None:
        async with a.slot(in_a_task, cost=10):
            await release.wait()

    async def scenario():
        a = admission(max_in_flight=2, max_queue=2)
        release = asyncio.Event()
        burst = [asyncio.create_task(one(a, release)) for _ in range(40)]
        await wait_until_async(lambda: sum(t.done() for t in burst) == 36)
        assert (a.in_flight, a.waiting) == (2, 2)
        release.set()
        outcomes = await asyncio.gather(*burst, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, APIError)]
        assert len(refused) == 36 and {e.status for e in refused} == {429} and outcomes.count(None) == 4

    asyncio.run(scenario())


def test_a_waiter_that_gives_up_leaves_the_queue_and_lets_those_behind_it_in():
    async def scenario():
        a = admission(max_in_flight=2, max_tokens=100)
        release, admitted = asyncio.Event(), []
        running = asyncio.create_task(hold(a, 50, release, admitted, 0))
        await wait_until_async(lambda: a.in_flight == 1)
        head = asyncio.create_task(hold(a, 60, release, admitted, 1))  # does not fit beside the running one
        behind = asyncio.create_task(hold(a, 40, release, admitted, 2))  # fits, but waits behind the head
        await wait_until_async(lambda: a.waiting == 2)
        head.cancel()  # its client went away
        await wait_until_async(lambda: len(admitted) == 2)
        assert admitted == [0, 2] and (a.in_flight, a.tokens, a.waiting) == (2, 90, 0)
        release.set()
        await asyncio.gather(running, behind)
        assert head.cancelled() and (a.in_flight, a.tokens) == (0, 0)

    asyncio.run(scenario())


def test_a_waiter_admitted_just_as_it_gives_up_hands_its_slot_on():
    """Its turn came and it was cancelled before it could run: the slot goes to the next waiter, not lost."""
    async def scenario():
        a = admission(max_in_flight=1, max_tokens=100)
        release, admitted = asyncio.Event(), []
        queued: list[asyncio.Task[None]] = []

        async def run_then_cancel_the_next() -> None:
            async with a.slot(cost=10):
                await wait_until_async(lambda: a.waiting == 2)
            # Leaving the slot admitted the first waiter, which has not run yet: it gives up now.
            queued[0].cancel()

        first = asyncio.create_task(run_then_cancel_the_next())
        await wait_until_async(lambda: a.in_flight == 1)
        queued += [asyncio.create_task(hold(a, 10, asyncio.Event(), admitted, 1)),
                   asyncio.create_task(hold(a, 10, release, admitted, 2))]
        late, after = queued
        await wait_until_async(lambda: admitted == [2])
        assert late.cancelled() and (a.in_flight, a.tokens, a.waiting) == (1, 10, 0)
        release.set()
        await asyncio.gather(first, after)
        assert (a.in_flight, a.tokens) == (0, 0)

    asyncio.run(scenario())
