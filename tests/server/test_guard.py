"""The guard (`--guard`): a held-out reward scores each chosen answer; the server returns it in `bon` and exports
it, and the selecting RM's reward minus it, on /metrics."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

import world
from common.servers import Server
from models.interface import RewardSpec, Score, ScoreItem
from models.loader import load_reward
from models.reward_judge import JudgeReward
from server.admission import Admission
from server.app import create_app
from server.settings import Settings
from server.state import load_guard
from tests.builders import launch_server

PROMPTS = ("Can I put my teddy bear in the washer?", "What is 7 + 5?", "Suggest a new activity I could do with my "
           "toy robot.")


def test_the_judge_backend_scores_the_last_user_turn_with_the_gold_judge():
    judge = JudgeReward()
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": PROMPTS[1]}]
    answers = ("7 + 5 = 12. Happy to help!", "7 + 5 = 13.", "")
    scores = judge.score_batch([(conversation, a) for a in answers])
    assert [s.value for s in scores] == [world.score(PROMPTS[1], a) for a in answers]
    assert [s.tokens for s in scores] == [0, 0, 0]  # it reads text, not tokens
    assert (judge.version, judge.activation, judge.label) == ("gold-judge", "identity", None)


def test_guard_settings_are_off_by_default_and_checked(tmp_path: Path):
    assert Settings().guard is None and load_guard(Settings()) is None
    with pytest.raises(ValidationError, match="--guard-path"):
        Settings(guard="hf")
    with pytest.raises(ValidationError, match="--guard-url"):
        Settings(guard="remote")
    missing = Settings(checkpoints=tmp_path, guard="hf", guard_path=tmp_path / "held-out-rm").missing_checkpoints()
    assert f"guard: {tmp_path / 'held-out-rm'}" in missing
    remote = Settings(guard="remote", guard_url="http://rm:8000/classify", guard_model="rm2").guard_spec()
    assert (remote.backend, remote.url, remote.remote_model) == ("remote", "http://rm:8000/classify", "rm2")
    assert isinstance(load_guard(Settings(guard="judge")), JudgeReward)


def test_an_hf_guard_is_a_reward_model_like_the_selecting_one(tiny_checkpoints: Path):
    guard = load_guard(Settings(guard="hf", guard_path=tiny_checkpoints / "rm"))
    reward = load_reward(RewardSpec(path=tiny_checkpoints / "rm"))
    item = ([{"role": "user", "content": PROMPTS[0]}], "No, wash it by hand.")
    assert guard is not None and guard.version == reward.version
    assert guard.score_batch([item])[0].value == pytest.approx(reward.score_batch([item])[0].value)


@pytest.fixture(scope="module")
def guarded(tiny_checkpoints: Path, log_dir: Path) -> Iterator[dict[str, Server]]:
    """Two servers started together: the gold judge as guard, and the selecting RM itself as guard (gap 0)."""
    common = ("--default-max-tokens", "16", "--default-best-of", "3")
    servers = {"judge": launch_server(tiny_checkpoints, log_dir, *common, "--guard", "judge"),
               "self": launch_server(tiny_checkpoints, log_dir, *common, "--guard", "hf", "--guard-path",
                                     str(tiny_checkpoints / "rm"))}
    try:
        yield {name: server.wait() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def _ask(server: Server, prompt: str, best_of: int, stream: bool = False) -> dict:
    body = {"model": "sft", "messages": [{"role": "user", "content": prompt}], "best_of": best_of, "seed": 7,
            "stream": stream}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _buckets(server: Server, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, summed over the series matching `labels` (a histogram with
    negative buckets has no `_sum`, as OpenMetrics wants)."""
    text = httpx.get(server.url + "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    out: dict[float, float] = {}
    for s in family.samples:
        if s.name == name + "_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
            out[float(s.labels["le"])] = out.get(float(s.labels["le"]), 0.0) + s.value
    return out


def test_each_answer_carries_the_judges_reward_and_metrics_export_the_gap(guarded: dict[str, Server]):
    server = guarded["judge"]
    gaps = {1: [], 3: []}
    for best_of in (1, 3):
        for prompt in PROMPTS:
            body = _ask(server, prompt, best_of)
            answer, bon = body["choices"][0]["message"]["content"], body["bon"]
            assert bon["guard_reward"] == world.score(prompt, answer)
            gaps[best_of].append(bon["rewards"][0] - bon["guard_reward"])
    for best_of, values in gaps.items():
        gap = _buckets(server, "bon_guard_gap", policy="sft", best_of=str(best_of))
        assert gap == {le: sum(v <= le for v in values) for le in gap}
        assert _buckets(server, "bon_guard_reward", policy="sft", best_of=str(best_of))[math.inf] == len(values)
    assert _buckets(server, "bon_guard_duration_seconds")[math.inf] == 2 * len(PROMPTS)
    chunk = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "sft", "messages": [{"role": "user", "content": PROMPTS[0]}], "stream": True}).text
    assert '"guard_reward": ' in chunk.split("\n\n")[0]  # the first chunk carries `bon`, the guard's reward in it


def test_the_selecting_rm_as_its_own_guard_leaves_no_gap(guarded: dict[str, Server]):
    server = guarded["self"]
    for prompt in PROMPTS:
        bon = _ask(server, prompt, 3)["bon"]
        assert bon["guard_reward"] == pytest.approx(bon["rewards"][0], abs=1e-4)
    gap = _buckets(server, "bon_guard_gap", policy="sft")
    assert gap[-0.5] == 0 and gap[0.5] == gap[math.inf] == len(PROMPTS)


class OverlapWatch(JudgeReward):
    """The gold judge, recording how many of its calls overlap and how many requests held a slot during each. A
    call waits a little for another one to join it, so that calls made from two threads at once are caught."""

    def __init__(self, admission: Admission):
        super().__init__()
        self.admission = admission
        self.slots_held: list[int] = []
        self.most_at_once = 0
        self._active = 0
        self._lock = threading.Lock()
        self._joined = threading.Event()

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        with self._lock:
            self._active += 1
            self.most_at_once = max(self.most_at_once, self._active)
            if self._active > 1:
                self._joined.set()
            self.slots_held.append(self.admission.in_flight)
        self._joined.wait(0.2)
        try:
            return super().score_batch(items)
        finally:
            with self._lock:
                self._active -= 1


def test_the_guard_runs_in_the_requests_slot_one_call_at_a_time(tiny_checkpoints: Path):
    async def scenario() -> tuple[OverlapWatch, list[httpx.Response]]:
        app = create_app(Settings(checkpoints=tiny_checkpoints, guard="judge", max_in_flight=4, default_best_of=2,
                                  default_max_tokens=6))
        state = app.state.bon
        await state.start()
        state.guard = watch = OverlapWatch(state.admission)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bon",
                                         timeout=60) as c:
                body = {"model": "sft", "messages": [{"role": "user", "content": PROMPTS[0]}]}
                alone = await c.post("/v1/chat/completions", json=body)
                together = await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(4)))
                return watch, [alone, *together]
        finally:
            await state.stop()

    watch, responses = asyncio.run(scenario())
    assert all(r.status_code == 200 and r.json()["bon"]["guard_reward"] is not None for r in responses)
    assert watch.slots_held[0] == 1  # the request alone still held its slot while the guard scored its answer
    assert len(watch.slots_held) == 5 and min(watch.slots_held) >= 1 and watch.most_at_once == 1
