import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from models.interface import BackendError, RewardBackend, Score, ScoreItem, require_finite
from server.app import create_app
from server.batcher import BatcherFull, MicroBatcher
from server.settings import Settings
from server.state import Served


class Recorder:
    """A scoring function that records the batches it is given (score = length of the text); `scoring` is set
    once a forward pass has begun, which then takes `delay_s`."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()
        self.scoring = threading.Event()

    def __call__(self, items: list[str]) -> list[float]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        self.scoring.set()
        if self.fail_on in items:
            raise RuntimeError("boom")
        time.sleep(self.delay_s)  # the forward pass
        return [float(len(x)) for x in items]


async def in_forward_pass(recorder: Recorder) -> None:
    """Wait until the recorder's first forward pass has begun."""
    assert await asyncio.to_thread(recorder.scoring.wait, 10), "no forward pass began"


async def _with_batcher(recorder: Recorder, body, **kwargs):
    sizes: list[int] = []
    batcher = MicroBatcher(recorder, on_batch=lambda size, _: sizes.append(size), **{"max_pending": 1000, **kwargs})
    batcher.start()
    try:
        return await body(batcher), sizes
    finally:
        await batcher.stop()


def test_concurrent_jobs_share_one_forward_pass_and_get_their_own_scores():
    recorder = Recorder()

    async def body(batcher):
        jobs = [["a" * i, "b" * (i + 1)] for i in range(1, 6)]
        return await asyncio.gather(*(batcher.score(job) for job in jobs))

    results, sizes = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.05))
    assert results == [[float(i), float(i + 1)] for i in range(1, 6)]
    assert sizes == [10]  # five requests of two candidates, one forward pass
    assert all(name.startswith("reward") for name in recorder.threads)  # off the event loop


def test_batches_never_exceed_max_batch_and_jobs_are_not_split():
    recorder = Recorder()

    async def body(batcher):
        return await asyncio.gather(*(batcher.score([f"{j}-{k}" for k in range(3)]) for j in range(5)))

    results, sizes = asyncio.run(_with_batcher(recorder, body, max_batch=7, max_wait_s=0.05))
    assert [len(r) for r in results] == [3] * 5
    assert sizes == [6, 6, 3]
    assert all(len(b) % 3 == 0 for b in recorder.batches)


def test_a_job_larger_than_max_batch_runs_alone():
    recorder = Recorder()

    async def body(batcher):
        return await batcher.score(["x"] * 10)

    result, sizes = asyncio.run(_with_batcher(recorder, body, max_batch=4, max_wait_s=0.0))
    assert result == [1.0] * 10 and sizes == [10]


def test_a_lone_job_waits_at_most_max_wait():
    recorder = Recorder()

    async def body(batcher):
        started = time.perf_counter()
        await batcher.score(["solo"])
        return time.perf_counter() - started

    elapsed, sizes = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.1))
    assert sizes == [1]
    assert 0.09 <= elapsed < 1.0


def test_jobs_arriving_during_a_forward_pass_form_the_next_batch():
    recorder = Recorder(delay_s=0.2)

    async def body(batcher):
        first = asyncio.create_task(batcher.score(["first"]))
        await in_forward_pass(recorder)
        later = [asyncio.create_task(batcher.score([f"later-{i}"])) for i in range(4)]
        return await asyncio.gather(first, *later)

    _, sizes = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.0))
    assert sizes == [1, 4]


def test_a_failing_item_fails_only_its_own_job_and_the_worker_carries_on():
    recorder = Recorder(fail_on="bad")

    async def body(batcher):
        results = await asyncio.gather(batcher.score(["ok"]), batcher.score(["bad"]), batcher.score(["also"]),
                                       return_exceptions=True)
        return results, await batcher.score(["fine"])

    (results, after), sizes = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.05))
    assert results[0] == [2.0] and isinstance(results[1], RuntimeError) and results[2] == [4.0]
    assert after == [4.0]
    # The three jobs failed together once, then each was scored alone.
    assert recorder.batches == [["ok", "bad", "also"], ["ok"], ["bad"], ["also"], ["fine"]]
    assert sizes == [1, 1, 1]


def test_a_non_finite_score_fails_only_its_own_job():
    """The reward model's own number for each item (`float` of the text): NaN and ±inf are refused per job, in the
    forward pass that produced them, and the other jobs of that pass get their scores."""
    def score(items: list[str]) -> list[Score]:
        return [Score(float(x), 0) for x in items]

    async def body():
        batcher = MicroBatcher(score, max_batch=64, max_wait_s=0.05, max_pending=64, check=require_finite)
        batcher.start()
        try:
            return await asyncio.gather(batcher.score(["1.5", "-2"]), batcher.score(["0.5", "nan"]),
                                        batcher.score(["inf"]), batcher.score(["3"]), return_exceptions=True)
        finally:
            await batcher.stop()

    fine, with_nan, infinite, alone = asyncio.run(body())
    assert [s.value for s in fine] == [1.5, -2.0] and [s.value for s in alone] == [3.0]
    assert isinstance(with_nan, BackendError) and "nan" in str(with_nan)
    assert isinstance(infinite, BackendError) and "inf" in str(infinite)


def test_a_full_queue_refuses_new_jobs_at_once():
    recorder = Recorder(delay_s=0.2)

    async def body(batcher):
        busy = asyncio.create_task(batcher.score(["busy"]))
        await in_forward_pass(recorder)  # items being scored no longer wait
        # Queued in this order: 2 items wait, 2 more would make 4 of at most 3, 1 more makes 3.
        queued = await asyncio.gather(batcher.score(["a", "b"]), batcher.score(["c", "d"]), batcher.score(["e"]),
                                      return_exceptions=True)
        return await busy, queued

    (busy, (first, refused, last)), _ = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.0,
                                                                  max_pending=3))
    assert busy == [4.0] and first == [1.0, 1.0] and last == [1.0]
    assert isinstance(refused, BatcherFull) and "2 items are waiting" in str(refused)


def test_cancelled_jobs_are_dropped_before_scoring():
    recorder = Recorder(delay_s=0.2)

    async def body(batcher):
        busy = asyncio.create_task(batcher.score(["busy"]))
        await in_forward_pass(recorder)
        gone = asyncio.create_task(batcher.score(["gone"]))
        kept = asyncio.create_task(batcher.score(["kept"]))
        await asyncio.sleep(0)  # one turn of the loop: both tasks run up to their wait, so both jobs are queued
        gone.cancel()
        return await asyncio.gather(busy, kept)

    results, _ = asyncio.run(_with_batcher(recorder, body, max_batch=64, max_wait_s=0.0))
    assert results == [[4.0], [4.0]]
    assert ["gone"] not in recorder.batches and all("gone" not in b for b in recorder.batches)


def test_score_needs_a_running_batcher():
    async def body():
        batcher = MicroBatcher(Recorder(), max_batch=4, max_wait_s=0.0, max_pending=4)
        with pytest.raises(RuntimeError):
            await batcher.score(["x"])

    asyncio.run(body())


class OwnLoopScorer:
    """A scoring function that runs an event loop of its own, as the remote reward backend does, and whose call is
    cancelled there for any batch holding `fatal`: the `CancelledError` it raises is no `Exception`, so it escapes
    the worker's error handling and kills the worker."""

    def __init__(self, fatal: str = "crash"):
        self.fatal = fatal

    def __call__(self, items: list[str]) -> list[float]:
        async def call() -> list[float]:
            if self.fatal in items:
                asyncio.current_task().cancel()
            await asyncio.sleep(0)
            return [float(len(x)) for x in items]

        return asyncio.run(call())


def test_a_worker_that_dies_is_started_again_and_only_its_batch_fails():
    restarts: list[None] = []

    async def body(batcher):
        # One job per batch: the first kills the worker, the second waits meanwhile and is scored after the restart.
        died, waited = await asyncio.wait_for(asyncio.gather(batcher.score(["crash"]), batcher.score(["waits"]),
                                                             return_exceptions=True), 10)
        return died, waited, await asyncio.wait_for(batcher.score(["fine"]), 10)

    (died, waited, after), sizes = asyncio.run(_with_batcher(OwnLoopScorer(), body, max_batch=1, max_wait_s=0.0,
                                                             on_restart=lambda: restarts.append(None)))
    assert isinstance(died, BackendError) and died.role == "reward" and "CancelledError" in str(died)
    assert waited == [5.0] and after == [4.0] and sizes == [1, 1]
    assert len(restarts) == 1


def test_a_worker_that_keeps_dying_is_given_up_and_says_why():
    restarts: list[None] = []

    async def body(batcher):
        for _ in range(3):
            with pytest.raises(BackendError, match="worker died while scoring"):
                await asyncio.wait_for(batcher.score(["crash"]), 10)
        assert batcher.failure is not None and "died 3 times in 60 s" in batcher.failure
        with pytest.raises(BackendError, match="micro-batcher is down"):
            await batcher.score(["fine"])

    asyncio.run(_with_batcher(OwnLoopScorer(), body, max_batch=1, max_wait_s=0.0, max_restarts=2,
                              on_restart=lambda: restarts.append(None)))
    assert len(restarts) == 2


class DyingReward:
    """The served reward model, scored by a function that dies like `OwnLoopScorer` for any answer holding its
    `fatal` text."""

    def __init__(self, reward: RewardBackend):
        self.reward = reward
        self.version, self.activation, self.label = reward.version, reward.activation, reward.label
        self.max_length = reward.max_length
        self._dies = OwnLoopScorer()

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        self._dies([answer for _, answer in items])
        return self.reward.score_batch(items)

    def close(self) -> None:
        self.reward.close()


def test_ready_fails_with_a_reason_once_the_batcher_is_given_up(tiny_checkpoints: Path):
    """Each death is a 502 for the request whose batch it was, and a restart; past `max_restarts` (5) the server
    says it is not ready, and why, until it is restarted."""
    admin = {"Authorization": "Bearer admin-key"}

    async def scenario() -> tuple[list[int], httpx.Response, httpx.Response, httpx.Response, str]:
        app = create_app(Settings(checkpoints=tiny_checkpoints, admin_key="admin-key", default_max_tokens=4))
        state = app.state.bon
        await state.start()
        served = state.served
        dying = DyingReward(served.reward)
        state.switch(Served(served.policies, dying, state.make_scorer(dying)))
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bon",
                                         timeout=60) as c:
                classify = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "crash"}]}
                statuses = [(await c.post("/classify", json=classify)).status_code for _ in range(6)]
                chat = await c.post("/v1/chat/completions",
                                    json={"model": "sft", "messages": [{"role": "user", "content": "Hi"}]})
                return (statuses, await c.get("/ready"), await c.get("/ready", headers=admin), chat,
                        (await c.get("/metrics")).text)
        finally:
            await state.stop()

    statuses, ready, detailed, chat, metrics = asyncio.run(scenario())
    assert statuses == [502] * 6
    assert ready.status_code == 503 and "(scorer_failed)" in ready.json()["error"]["message"]
    assert "died 6 times in 60 s" in detailed.json()["error"]["message"]
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "not_ready" and "retry-after" in chat.headers
    assert "bon_rm_worker_restarts_total 5.0" in metrics
