"""Hot swap semantics: a request in flight finishes on the model it started on, the old model is closed only
after its last request, and under steady load swaps fail no request and every answer names a version that was
live while it was being served.
"""

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.checkpoint import read_manifest
from server.app import create_app
from server.settings import Settings
from server.state import PolicyEntry, Served
from tests.builders import launch_server, wait_until_async

KEY = "swap-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
PROMPT = [{"role": "user", "content": "Can you suggest an activity for the old cat?"}]
CLIENTS, DURATION_S = 8, 30.0
SWAPS = [*[("policy", "ppo" if k % 2 == 0 else "dpo") for k in range(10)]]
SWAPS.insert(3, ("reward", "rm-v2"))
SWAPS.insert(8, ("reward", "rm"))
"""The policy goes DPO -> PPO -> DPO ... 10 times; the RM goes rm -> rm-v2 -> rm in between."""


def version(root: Path, name: str) -> str:
    return read_manifest(root / name).version


class GatedPolicy:
    """A real policy whose generation waits for `release`; records when it is closed."""

    def __init__(self, inner, version: str):
        self.inner, self.name, self.version, self.context_length = inner, inner.name, version, inner.context_length
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.closed = False

    def count_prompt_tokens(self, messages):
        return self.inner.count_prompt_tokens(messages)

    def requests_running(self):
        return self.inner.requests_running()

    async def generate(self, *args):
        self.entered.set()
        await self.release.wait()
        return await self.inner.generate(*args)

    async def close(self) -> None:
        self.closed = True
        await self.inner.close()


class GatedReward:
    """A real reward model whose scoring (in the micro-batcher's thread) waits while `release` is clear."""

    def __init__(self, inner, version: str):
        self.inner, self.version = inner, version
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.closed = False

    def score_batch(self, items):
        self.entered.set()
        self.release.wait(30)
        return self.inner.score_batch(items)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


def test_a_swapped_out_model_is_closed_only_after_its_last_request(swap_root):
    async def scenario() -> None:
        app = create_app(Settings(checkpoints=swap_root, admin_key=KEY, default_best_of=2, default_max_tokens=6))
        state = app.state.bon
        await state.start()
        configured = state.served
        policy = GatedPolicy(configured.policies["sft"].backend, "sft-gated")
        reward = GatedReward(configured.reward, "rm-gated")
        state.switch(Served({"sft": PolicyEntry(policy, 2, "hf")}, reward, state.make_scorer(reward)))
        await configured.scorer.stop()

        def draining() -> float | None:
            return state.metrics.registry.get_sample_value("bon_models_draining")

        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bon",
                                         timeout=60) as client:
                def ask() -> asyncio.Task:
                    return asyncio.create_task(client.post("/v1/chat/completions",
                                                           json={"model": "sft", "messages": PROMPT}))

                # The policy: a request is generating on the old one when the swap happens.
                slow = ask()
                await asyncio.wait_for(policy.entered.wait(), 10)
                swap = (await client.post("/admin/policies/sft", headers=ADMIN, json={"checkpoint": "dpo"})).json()
                assert (swap["previous_version"], swap["previous_in_flight"]) == ("sft-gated", 1)
                fresh = (await ask()).json()["bon"]
                assert (fresh["policy_version"], fresh["reward_model_version"]) == (version(swap_root, "dpo"),
                                                                                    "rm-gated")
                assert not policy.closed and draining() == 1
                policy.release.set()
                assert (await slow).json()["bon"]["policy_version"] == "sft-gated"
                await wait_until_async(lambda: policy.closed, what="the old policy to close")
                assert draining() == 0

                # The reward model: a request is being scored by the old one when the swap happens.
                reward.release.clear()
                reward.entered.clear()
                slow = ask()
                await asyncio.wait_for(asyncio.to_thread(reward.entered.wait, 10), 15)
                swap = (await client.post("/admin/reward", headers=ADMIN, json={"checkpoint": "rm-v2"})).json()
                assert (swap["previous_version"], swap["previous_in_flight"]) == ("rm-gated", 1)
                assert (await ask()).json()["bon"]["reward_model_version"] == version(swap_root, "rm-v2")
                assert not reward.closed
                reward.release.set()
                answered = (await slow).json()["bon"]
                assert answered["reward_model_version"] == "rm-gated"
                assert answered["policy_version"] == version(swap_root, "dpo")
                await wait_until_async(lambda: reward.closed, what="the old reward model to close")
        finally:
            reward.release.set()
            await state.stop()

    asyncio.run(scenario())


@dataclass
class Answer:
    started: float
    finished: float
    status: int
    policy_version: str | None
    reward_version: str | None
    error: str | None = None


@dataclass
class Swap:
    target: str
    checkpoint: str
    requested: float
    answered: float
    status: int
    body: dict


async def _client(client: httpx.AsyncClient, index: int, deadline: float, answers: list[Answer]) -> None:
    sent = 0
    while time.time() < deadline:
        started = time.time()
        body = {"model": "live", "messages": [{"role": "user", "content": f"Question {index}.{sent}: what can I "
                                                                          "do with my teddy bear?"}]}
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            answers.append(Answer(started, time.time(), -1, None, None, repr(exc)))
            continue
        finally:
            sent += 1
        if response.status_code != 200:
            answers.append(Answer(started, time.time(), response.status_code, None, None, response.text))
            continue
        bon = response.json()["bon"]
        answers.append(Answer(started, time.time(), 200, bon["policy_version"], bon["reward_model_version"]))


async def _swapper(admin: httpx.AsyncClient, start: float, swaps: list[Swap]) -> None:
    gap = (DURATION_S - 4.0) / len(SWAPS)
    for k, (target, checkpoint) in enumerate(SWAPS):
        await asyncio.sleep(max(0.0, start + 1.5 + k * gap - time.time()))  # the schedule: a swap every `gap` s
        path = "/admin/policies/live" if target == "policy" else "/admin/reward"
        requested = time.time()
        response = await admin.post(path, json={"checkpoint": checkpoint})
        swaps.append(Swap(target, checkpoint, requested, time.time(), response.status_code, response.json()))


def _windows(first: str, swaps: list[Swap]) -> list[tuple[str, float, float]]:
    """(version, live from, live until) on the server's clock, from the switch times the admin API reports."""
    windows, current, since = [], first, float("-inf")
    for swap in swaps:
        windows.append((current, since, swap.body["switched_at"]))
        current, since = swap.body["version"], swap.body["switched_at"]
    return [*windows, (current, since, float("inf"))]


def _live_while_served(windows: list[tuple[str, float, float]], answer_version: str, answer: Answer) -> bool:
    return any(v == answer_version and start <= answer.finished and end >= answer.started
               for v, start, end in windows)


@pytest.mark.slow  # a 30-second benchmark: `make test-slow`
def test_steady_load_through_policy_and_reward_swaps(swap_root, log_dir):
    server = launch_server(swap_root, log_dir, "--admin-key", KEY, "--policy", f"live={swap_root / 'dpo'}",
                           "--default-best-of", "2", "--default-max-tokens", "8", "--max-in-flight", "8",
                           "--rm-max-wait-ms", "5")
    try:
        server.wait()

        async def run() -> tuple[list[Answer], list[Swap]]:
            answers: list[Answer] = []
            swaps: list[Swap] = []
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client, \
                    httpx.AsyncClient(base_url=server.url, timeout=120, headers=ADMIN) as admin:
                start = time.time()
                await asyncio.gather(_swapper(admin, start, swaps),
                                     *(_client(client, i, start + DURATION_S, answers) for i in range(CLIENTS)))
            return answers, swaps

        answers, swaps = asyncio.run(run())
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    finally:
        server.stop()

    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    assert [s.status for s in swaps] == [200] * len(SWAPS), [s.body for s in swaps if s.status != 200]
    policy_swaps = [s for s in swaps if s.target == "policy"]
    reward_swaps = [s for s in swaps if s.target == "reward"]
    assert [s.body["version"] for s in policy_swaps] == [version(swap_root, s.checkpoint) for s in policy_swaps]

    policy_windows = _windows(version(swap_root, "dpo"), policy_swaps)
    reward_windows = _windows(version(swap_root, "rm"), reward_swaps)
    for answer in answers:
        assert _live_while_served(policy_windows, answer.policy_version, answer), answer
        assert _live_while_served(reward_windows, answer.reward_version, answer), answer
    assert {a.policy_version for a in answers} == {version(swap_root, "dpo"), version(swap_root, "ppo")}
    assert {a.reward_version for a in answers} == {version(swap_root, "rm"), version(swap_root, "rm-v2")}

    # Swap latency: from the admin request to the first answer on the new model.
    latency = {}
    for target, swaps_of, field in (("policy", policy_swaps, "policy_version"),
                                    ("reward", reward_swaps, "reward_version")):
        latency[target] = [min(a.finished for a in answers if getattr(a, field) == s.body["version"]
                               and a.finished >= s.body["switched_at"]) - s.requested for s in swaps_of]
    during = sum(any(a.started < s.answered and a.finished > s.requested for s in swaps) for a in answers)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    ok = {target: samples[("bon_swaps_total", (("result", "ok"), ("target", target)))]
          for target in ("policy", "reward")}
    assert ok == {"policy": 10, "reward": 2} and samples[("bon_models_draining", ())] == 0
    by_version = {labels: value for (name, labels), value in samples.items() if name == "bon_requests_total"}
    assert sum(by_version.values()) == len(answers)
    assert {dict(labels)["version"] for labels in by_version} == {version(swap_root, "dpo"),
                                                                   version(swap_root, "ppo")}

    report = {
        "clients": CLIENTS, "duration_s": DURATION_S, "requests": len(answers), "failed": 0,
        "requests_during_swaps": during, "policy_swaps": len(policy_swaps), "reward_swaps": len(reward_swaps),
        "policy_swap_seconds_server": [round(s.body["timings"]["total_seconds"], 3) for s in policy_swaps],
        "policy_swap_to_first_answer_s": {"mean": round(statistics.mean(latency["policy"]), 3),
                                          "max": round(max(latency["policy"]), 3)},
        "reward_swap_to_first_answer_s": {"mean": round(statistics.mean(latency["reward"]), 3),
                                          "max": round(max(latency["reward"]), 3)},
        "request_seconds": {"p50": round(statistics.median(a.finished - a.started for a in answers), 3),
                            "max": round(max(a.finished - a.started for a in answers), 3)},
    }
    (log_dir / "hot-swap-report.json").write_text(json.dumps(report, indent=2))
    print("hot swap under load:", json.dumps(report))
    assert during > 0 and len(answers) > 100
