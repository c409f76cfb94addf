"""The server as users meet it: a real process, called with the official openai client and with httpx."""

import asyncio
import json

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from models.interface import RewardSpec
from models.reward_hf import HFReward
from tests.builders import wait_until

PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(server) -> dict:
    text = httpx.get(server.url + "/metrics").text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(family, suffix: str = "", **labels) -> float:
    return sum(s.value for s in family.samples
               if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_ready_and_models(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["policies"]["sft"].startswith("sft-")
    assert ready["reward_model"].startswith("rm-")
    (model,) = client(server).models.list().data
    assert model.id == "sft" and model.model_extra["bon"] == {
        "version": ready["policies"]["sft"], "backend": "hf", "default_best_of": 4}


def test_chat_completion_returns_the_best_rewarded_candidates(server):
    response = client(server).chat.completions.create(
        model="sft", messages=PROMPT, max_tokens=12, n=2, seed=11,
        extra_body={"best_of": 6, "return_candidates": True})
    bon = response.model_extra["bon"]
    assert response.object == "chat.completion" and response.model == "sft"
    assert len(response.choices) == 2 and [c.index for c in response.choices] == [0, 1]
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in response.choices)
    candidates = bon["candidates"]
    assert bon["best_of"] == len(candidates) == 6 and bon["selection"] == "argmax" and bon["seed"] == 11
    rewards = [c["reward"] for c in candidates]
    assert bon["rewards"][0] == max(rewards)
    assert bon["rewards"] == sorted(rewards, reverse=True)[:2]
    for choice, index, reward in zip(response.choices, bon["candidate_indices"], bon["rewards"], strict=True):
        assert candidates[index]["text"] == choice.message.content and candidates[index]["reward"] == reward
    assert bon["reward_mean"] == pytest.approx(sum(rewards) / 6)
    assert bon["policy_version"] == response.system_fingerprint and bon["reward_model_version"].startswith("rm-")
    assert set(bon["timings"]) == {"queue_seconds", "sample_seconds", "score_seconds", "total_seconds"}
    usage = response.usage
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens == sum(candidates[i]["tokens"] for i in bon["candidate_indices"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert bon["candidate_tokens"] == sum(c["tokens"] for c in candidates) >= usage.completion_tokens


def test_candidates_are_left_out_unless_asked_for_and_best_of_defaults_per_policy(server):
    response = client(server).chat.completions.create(model="sft", messages=PROMPT, max_tokens=4)
    bon = response.model_extra["bon"]
    assert bon["candidates"] is None and bon["best_of"] == 4 and len(response.choices) == 1


def test_the_same_seed_gives_the_same_answer(server):
    def ask(seed: int) -> tuple[str, list[str]]:
        r = client(server).chat.completions.create(model="sft", messages=PROMPT, max_tokens=16, seed=seed,
                                                   extra_body={"best_of": 4, "return_candidates": True})
        return r.choices[0].message.content, [c["text"] for c in r.model_extra["bon"]["candidates"]]

    first, again, other = ask(1234), ask(1234), ask(4321)
    assert first == again
    assert other[1] != first[1]


def test_greedy_decoding_samples_once_and_returns_n_copies(server):
    """At temperature 0 every candidate would be the same: one is sampled and scored, and returned n times."""
    r = client(server).chat.completions.create(model="sft", messages=PROMPT, max_tokens=10, temperature=0, n=3,
                                               extra_body={"best_of": 8, "return_candidates": True})
    bon = r.model_extra["bon"]
    (candidate,) = bon["candidates"]
    assert bon["best_of"] == 1 and bon["candidate_indices"] == [0, 0, 0] and len(set(bon["rewards"])) == 1
    assert [c.message.content for c in r.choices] == [candidate["text"]] * 3
    assert bon["candidate_tokens"] == candidate["tokens"] and r.usage.completion_tokens == 3 * candidate["tokens"]


def test_stop_strings_cut_the_text(server):
    r = client(server).chat.completions.create(model="sft", messages=PROMPT, max_tokens=24, stop=["e", "o"],
                                               temperature=1.5, seed=5,
                                               extra_body={"best_of": 8, "return_candidates": True})
    candidates = r.model_extra["bon"]["candidates"]
    assert not any("e" in c["text"] or "o" in c["text"] for c in candidates)
    assert any(c["finish_reason"] == "stop" for c in candidates)


def test_selection_strategies(server):
    for strategy in ("weighted_vote", "soft"):
        body = {"model": "sft", "messages": PROMPT, "max_tokens": 8, "seed": 3, "best_of": 5, "n": 2,
                "selection": strategy, "selection_temperature": 0.5}
        first = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
        again = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
        assert first["bon"]["selection"] == strategy and len(first["choices"]) == 2
        assert first["bon"]["candidate_indices"] == again["bon"]["candidate_indices"]
        assert len(set(first["bon"]["candidate_indices"])) == 2


def test_streaming_sends_the_winner_in_openai_chunks(server):
    kwargs = dict(model="sft", messages=PROMPT, max_tokens=16, seed=77, extra_body={"best_of": 4})
    whole = client(server).chat.completions.create(**kwargs)
    chunks = list(client(server).chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                         **kwargs))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["bon"]["rewards"] == whole.model_extra["bon"]["rewards"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_raw_stream_ends_with_done_and_has_no_usage_unless_asked(server):
    body = {"model": "sft", "messages": PROMPT, "max_tokens": 6, "stream": True, "best_of": 2, "n": 2}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}


def test_async_client_and_legacy_completions(server):
    async def run():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as aclient:
            chat = await aclient.chat.completions.create(model="sft", messages=PROMPT, max_tokens=8)
            legacy = await aclient.completions.create(model="sft", prompt="Can you suggest an activity?",
                                                      best_of=3, n=2, max_tokens=8, seed=9)
            streamed = [c async for c in await aclient.completions.create(
                model="sft", prompt="Can you suggest an activity?", best_of=3, n=2, max_tokens=8, seed=9,
                stream=True)]
            return chat, legacy, streamed

    chat, legacy, streamed = asyncio.run(run())
    assert chat.choices[0].message.content is not None
    assert legacy.object == "text_completion" and len(legacy.choices) == 2
    assert legacy.model_extra["bon"]["best_of"] == 3
    text = "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == 0)
    assert text == legacy.choices[0].text


def test_unknown_fields_are_tolerated(server):
    body = {"model": "sft", "messages": PROMPT, "max_tokens": 4, "frequency_penalty": 0.5, "my_field": {"x": 1},
            "max_completion_tokens": 5}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert "my_field" in server.logs()


def test_concurrent_requests_share_reward_model_batches(server):
    async def run():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
            return await asyncio.gather(*(c.chat.completions.create(
                model="sft", messages=[{"role": "user", "content": f"Question {i}: what can I do today?"}],
                max_tokens=8, extra_body={"best_of": 4}) for i in range(32)))

    responses = asyncio.run(run())
    assert len(responses) == 32 and all(r.choices[0].finish_reason in ("stop", "length") for r in responses)
    batch = metrics(server)["bon_rm_batch_size"]
    observed = sample_value(batch, "_count")
    up_to_one_request = sample_value(batch, "_bucket", le="4.0")
    assert observed > up_to_one_request, "some RM forward pass scored more than one request's candidates"


def test_metrics_describe_the_traffic(server):
    client(server).chat.completions.create(model="sft", messages=PROMPT, max_tokens=4, extra_body={"best_of": 2})
    families = metrics(server)
    for name in ("bon_request_duration_seconds", "bon_queue_wait_seconds", "bon_sample_duration_seconds",
                 "bon_score_duration_seconds", "bon_rm_batch_duration_seconds", "bon_selected_reward",
                 "bon_reward_gain"):
        assert families[name].type == "histogram", name
    assert sample_value(families["bon_request_duration_seconds"], "_count", policy="sft", best_of="2") >= 1
    for name in ("bon_candidates_generated", "bon_tokens_generated", "bon_requests", "bon_prompt_tokens"):
        assert families[name].type == "counter" and sample_value(families[name], "_total", policy="sft") > 0, name
    assert sample_value(families["bon_requests_in_flight"]) == 0
    assert "bon_rejections" in families


def test_a_client_that_disconnects_cancels_its_generation(server, front):
    """(`front` is ready first: its warm-up sends this server a completion of its own.)"""
    def counts() -> tuple[float, float]:
        families = metrics(server)
        return (sample_value(families["bon_requests_cancelled"], "_total"),
                sample_value(families["bon_requests"], "_total"))

    cancelled, answered = counts()
    # Every candidate runs to max_tokens (a second or more here): the client gives up long before.
    body = {"model": "sft", "messages": PROMPT, "max_tokens": 230, "ignore_eos": True, "best_of": 32}
    try:
        answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.15))
    except httpx.ReadTimeout:
        pass
    else:
        pytest.fail(f"answered before the client gave up: {answer.status_code} {answer.text[:300]}")
    wait_until(lambda: counts()[0] != cancelled, 10, "the server to notice the disconnect")
    assert counts() == (cancelled + 1, answered)  # stopped, not answered


def test_classify_is_scored_in_the_micro_batches_and_counts_the_rms_tokens(server, front, tiny_checkpoints):
    """Concurrent `/classify` calls share RM forward passes, as Best-of-N candidates do, and `usage` is the count
    of tokens the RM read. (`front` is ready first: its warm-up calls this server's `/classify` too.)"""
    answers = [f"You could read {k} short stories." for k in range(8)]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            responses = await asyncio.gather(*(c.post("/classify", json={
                "messages": [*PROMPT, {"role": "assistant", "content": a}], "use_activation": False})
                for a in answers))
        return [r.json() for r in responses]

    # The session's server is shared: work left by earlier tests (a cancelled best_of=32, say) must be done first.
    wait_until(lambda: sample_value(metrics(server)["bon_requests_in_flight"]) == 0, 60, "the server to be idle")
    batch = metrics(server)["bon_rm_batch_size"]
    passes, items = sample_value(batch, "_count"), sample_value(batch, "_sum")
    bodies = asyncio.run(run())
    batch = metrics(server)["bon_rm_batch_size"]
    assert sample_value(batch, "_sum") - items == len(answers)
    assert sample_value(batch, "_count") - passes < len(answers), "no RM forward pass scored two calls together"

    reward = HFReward.load(RewardSpec(path=tiny_checkpoints / "rm"))
    expected = reward.score_batch([(PROMPT, a) for a in answers])
    for body, score in zip(bodies, expected, strict=True):
        assert body["usage"] == {"prompt_tokens": score.tokens, "total_tokens": score.tokens, "completion_tokens": 0,
                                 "prompt_tokens_details": None, "completion_tokens_details": None}
        assert body["data"][0]["probs"][0] == pytest.approx(score.value, abs=1e-5)
        assert body["data"][0]["label"] == "LABEL_0"


def test_openapi_describes_the_typed_responses(server):
    spec = httpx.get(server.url + "/openapi.json").json()

    def response_schema(path: str, method: str = "post") -> str:
        return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]

    assert response_schema("/classify") == "#/components/schemas/ClassifyResponse"
    assert list(spec["components"]["schemas"]["ClassifyResponse"]["properties"]) == [
        "id", "object", "created", "model", "data", "usage"]
    assert list(spec["components"]["schemas"]["ClassifyData"]["properties"]) == [
        "index", "label", "probs", "num_classes"]
    assert response_schema("/v1/models", "get") == "#/components/schemas/ModelList"
