"""The server under stress, as a process: admission by cost, a bounded queue, deadlines, clients that go away, a
burst at ten times capacity, and a graceful shutdown on SIGTERM."""

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from common.servers import Server
from server.pipeline import CLIENT_TIMEOUT_HEADER, request_timeout
from server.settings import Settings
from tests.builders import launch_server, wait_until, wait_until_async

CHAT = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
BUDGET = 59_000
LONG = {"best_of": 256, "max_tokens": 230, "ignore_eos": True}
LONG_TOKENS = 256 * 230
"""58,880 tokens of the budget: several seconds of decoding on a CPU (7 s here), well past the 3 s deadline below."""
CAPACITY = {"max_in_flight": 2, "max_queue": 2}


def _chat(**fields) -> dict:
    return {"model": "sft", "messages": PROMPT, **fields}


@pytest.fixture(scope="module")
def stressed(tiny_checkpoints: Path, log_dir: Path) -> Iterator[dict[str, Server]]:
    """Started together: `bounded`, two requests in flight and two queued within a budget of 59,000 tokens; and
    `doomed`, which the shutdown test stops."""
    launched = {
        "bounded": launch_server(tiny_checkpoints, log_dir, "--max-in-flight", str(CAPACITY["max_in_flight"]),
                                 "--max-queue", str(CAPACITY["max_queue"]), "--max-inflight-tokens", str(BUDGET),
                                 "--max-best-of", "256", "--default-best-of", "2", "--default-max-tokens", "8",
                                 "--retry-after-s", "3"),
        "doomed": launch_server(tiny_checkpoints, log_dir, "--max-in-flight", "1", "--shutdown-grace-s", "60",
                                "--max-best-of", "256")}
    try:
        yield {name: server.wait() for name, server in launched.items()}
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture
def bounded(stressed: dict[str, Server]) -> Server:
    """The bounded server, idle: what an earlier test left running has stopped."""
    server = stressed["bounded"]
    wait_until(lambda: metric(server, "bon_requests_in_flight") == 0, 60, "the server to be idle")
    return server


def metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        (line,) = [line for line in f if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def test_a_request_larger_than_the_whole_budget_is_400_and_greedy_costs_one_candidate(bounded):
    too_large = _chat(best_of=256, max_tokens=235)  # 60,160 tokens
    refused = error(httpx.post(bounded.url + CHAT, json=too_large, timeout=30), 400)
    assert refused["code"] == "request_too_large" and refused["param"] == "max_tokens"
    assert "60160 tokens" in refused["message"] and f"({BUDGET})" in refused["message"]
    greedy = httpx.post(bounded.url + CHAT, json={**too_large, "temperature": 0}, timeout=60)
    assert greedy.status_code == 200 and greedy.json()["bon"]["best_of"] == 1


def test_a_request_waits_for_its_cost_to_fit_a_full_queue_is_429_and_a_deadline_stops_the_work(bounded):
    """The long request holds nearly all the budget until its deadline (the client's timeout, 3 s) stops it: the
    next one waits with a slot free, the one after it waits its turn, the queue is then full."""
    timeouts, timeout_tokens = (metric(bounded, "bon_rejections_total", reason="timeout"),
                                metric(bounded, "bon_cancelled_tokens_total", reason="timeout"))

    async def run() -> tuple[httpx.Response, ...]:
        async with httpx.AsyncClient(base_url=bounded.url, timeout=60) as c:
            started = time.perf_counter()
            long = asyncio.create_task(c.post(CHAT, json=_chat(**LONG), headers={CLIENT_TIMEOUT_HEADER: "3"}))
            await wait_until_async(lambda: metric(bounded, "bon_inflight_tokens") == LONG_TOKENS, 30)
            middle = asyncio.create_task(c.post(CHAT, json=_chat(best_of=4, max_tokens=200)))  # 800 more: over
            await wait_until_async(lambda: metric(bounded, "bon_requests_queued") == 1, 30)
            small = asyncio.create_task(c.post(CHAT, json=_chat(best_of=1, max_tokens=8)))  # fits, comes later
            await wait_until_async(lambda: metric(bounded, "bon_requests_queued") == 2, 30)
            assert metric(bounded, "bon_requests_in_flight") == 1
            refused = await c.post(CHAT, json=_chat())
            stopped = await long
            return refused, stopped, await middle, await small, time.perf_counter() - started

    refused, stopped, middle, small, elapsed = asyncio.run(run())
    assert error(refused, 429)["code"] == "queue_full" and refused.headers["retry-after"] == "3"
    timed_out = error(stopped, 408)
    assert timed_out["code"] == "timeout" and "within its time limit of 3 s" in timed_out["message"]
    for waited in (middle, small):
        assert waited.status_code == 200 and waited.json()["bon"]["timings"]["queue_seconds"] > 1
    assert elapsed < 30
    assert metric(bounded, "bon_rejections_total", reason="timeout") == timeouts + 1
    assert metric(bounded, "bon_cancelled_tokens_total", reason="timeout") > timeout_tokens


def test_the_official_client_sends_its_timeout(bounded):
    """The header the deadline reads is the one the openai client sends (its read timeout, in seconds)."""
    c = OpenAI(base_url=bounded.url + "/v1", api_key="unused", max_retries=0, timeout=7.5)
    raw = c.chat.completions.with_raw_response.create(model="sft", messages=PROMPT, max_tokens=4)
    assert raw.http_request.headers[CLIENT_TIMEOUT_HEADER] == "7.5" and raw.parse().choices


def test_the_deadline_is_the_servers_or_the_clients_shorter_one():
    settings = Settings(request_timeout_s=20)
    for header, seconds in (("2.5", 2.5), ("60", 20), ("0", 20), ("-1", 20), ("nan", 20), ("soon", 20), (None, 20)):
        headers = [] if header is None else [(CLIENT_TIMEOUT_HEADER.encode(), header.encode())]
        assert request_timeout(Request({"type": "http", "headers": headers}), settings) == seconds, header


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_stops_its_generation_within_a_second(bounded, stream):
    tokens, cancelled = (metric(bounded, "bon_cancelled_tokens_total", reason="client_closed"),
                         metric(bounded, "bon_requests_cancelled_total"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(bounded.url + CHAT, json=_chat(**LONG, stream=stream), timeout=httpx.Timeout(60, read=0.5))
    gone = time.monotonic()
    wait_until(lambda: metric(bounded, "bon_requests_in_flight") == 0
               and metric(bounded, "bon_policy_requests_running") == 0, 10, "the generation to stop")
    assert time.monotonic() - gone < 1.0
    assert metric(bounded, "bon_requests_cancelled_total") == cancelled + 1
    generated = metric(bounded, "bon_cancelled_tokens_total", reason="client_closed") - tokens
    print(f"\nclient gone after 0.5 s: {generated:.0f} of {LONG_TOKENS} tokens generated, stopped within "
          f"{time.monotonic() - gone:.2f} s")
    assert 0 < generated < LONG_TOKENS  # what it cost until it stopped, short of the whole request


def test_a_burst_of_ten_times_capacity_gets_only_200_and_429(bounded):
    body = _chat(best_of=8, max_tokens=64, ignore_eos=True)  # a tenth of a second or so: the burst outpaces it
    burst = 10 * (CAPACITY["max_in_flight"] + CAPACITY["max_queue"])
    for _ in range(3):  # the same work before measuring: what the first requests allocate is not growth
        assert httpx.post(bounded.url + CHAT, json=body, timeout=60).status_code == 200
    before = rss_bytes(bounded.process.pid)

    async def run() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(base_url=bounded.url, timeout=60,
                                     limits=httpx.Limits(max_connections=burst)) as c:
            async def one() -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                response = await c.post(CHAT, json=body)
                return response, time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(burst)))

    results = asyncio.run(run())
    growth = rss_bytes(bounded.process.pid) - before
    statuses = Counter(r.status_code for r, _ in results)
    assert set(statuses) == {200, 429} and statuses[200] >= 4, statuses
    for response, _ in results:
        if response.status_code == 429:
            assert error(response, 429)["code"] == "queue_full" and response.headers["retry-after"] == "3"
    admitted = sorted(seconds for r, seconds in results if r.status_code == 200)
    print(f"\nburst of {burst}: {dict(statuses)}, slowest admitted {admitted[-1]:.3f} s, RSS +{growth >> 10} KiB")
    assert admitted[-1] < 10, admitted  # at most the queue's length of small requests ahead of any of them
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB over the burst"


def test_sigterm_finishes_the_requests_in_flight_refuses_new_ones_and_exits_0(stressed):
    doomed = stressed["doomed"]

    def shutting_down() -> bool:
        ready = httpx.get(doomed.url + "/ready", timeout=10)
        return ready.status_code == 503 and "(shutting_down)" in ready.json()["error"]["message"]

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=doomed.url, timeout=120) as c:
            running = asyncio.create_task(c.post(CHAT, json=_chat(**LONG)))  # seconds: still running at the end
            await wait_until_async(lambda: metric(doomed, "bon_requests_in_flight") == 1, 30)
            queued = asyncio.create_task(c.post(CHAT, json=_chat(best_of=2, max_tokens=8)))
            await wait_until_async(lambda: metric(doomed, "bon_requests_queued") == 1, 30)
            doomed.process.send_signal(signal.SIGTERM)
            await wait_until_async(shutting_down, 10, "/ready to say the server is shutting down")
            refused = await c.post(CHAT, json=_chat(best_of=2, max_tokens=8))
            return await running, await queued, refused

    running, queued, refused = asyncio.run(run())
    assert running.status_code == 200 and queued.status_code == 200
    assert error(refused, 503)["code"] == "not_ready" and "retry-after" in refused.headers
    assert doomed.process.wait(timeout=30) == 0
    assert "shutting down" in doomed.logs()
