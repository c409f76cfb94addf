"""`bon serve --policy-backend vllm` with a real vLLM engine (the CPU build in CI) on a tiny trained checkpoint,
called as users call it: the official openai client and httpx."""

import threading

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from common.servers import Server
from models.interface import RewardSpec
from models.reward_hf import HFReward
from tests.builders import Sampler, wait_until

pytestmark = pytest.mark.vllm

PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
CHAT = "/v1/chat/completions"
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(server: Server, **fields) -> dict:
    response = httpx.post(server.url + CHAT, json={"model": "sft", "messages": PROMPT, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def scrape(server: Server) -> dict[str, float]:
    """The /metrics samples this module reads: bon's own, and vLLM's finished requests by reason."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "bon_policy_requests_running" and sample.labels["policy"] == "sft":
                values[sample.name] = sample.value
            elif sample.name == "bon_requests_cancelled_total":
                values[sample.name] = sample.value
            elif sample.name == "vllm:request_success_total" and sample.labels["model_name"] == "sft":
                values[f"{sample.name}/{sample.labels['finished_reason']}"] = sample.value
    return values


def engine_requests(server: Server) -> float:
    """The engine's unfinished requests (one per sampled candidate), as /metrics exports them."""
    return scrape(server)["bon_policy_requests_running"]


def test_models_name_the_vllm_backend(vllm_server):
    (model,) = client(vllm_server).models.list().data
    assert model.id == "sft" and model.model_extra["bon"]["backend"] == "vllm"


def test_best_of_32_with_n_returns_the_top_rewarded_candidates(vllm_server):
    response = client(vllm_server).chat.completions.create(
        model="sft", messages=PROMPT, max_tokens=16, n=4, seed=3,
        extra_body={"best_of": 32, "return_candidates": True})
    bon = response.model_extra["bon"]
    candidates = bon["candidates"]
    assert len(response.choices) == 4 and len(candidates) == 32
    rewards = [c["reward"] for c in candidates]
    assert bon["rewards"] == sorted(rewards, reverse=True)[:4]
    for choice, index in zip(response.choices, bon["candidate_indices"], strict=True):
        assert choice.message.content == candidates[index]["text"]
    assert len({c["text"] for c in candidates}) > 8, "32 samples at T=1 should mostly differ"
    assert all(1 <= c["tokens"] <= 16 for c in candidates)
    assert response.usage.completion_tokens == sum(candidates[i]["tokens"] for i in bon["candidate_indices"])


def test_the_same_seed_gives_the_same_candidates(vllm_server):
    def texts(seed: int) -> list[str]:
        bon = chat(vllm_server, best_of=8, max_tokens=16, seed=seed, return_candidates=True)["bon"]
        return [c["text"] for c in bon["candidates"]]

    first = texts(1234)
    assert texts(1234) == first
    assert texts(1235) != first
    assert texts(-1) == texts(-1)  # vLLM itself takes -1 for "no seed"
    assert texts(2**64 - 1) == texts(2**64 - 1)  # the largest seed the API accepts, with 8 samples seeded from it


def test_stop_strings_cut_each_candidate_where_the_unstopped_one_has_it(vllm_server):
    common = dict(best_of=8, max_tokens=24, seed=77, return_candidates=True)
    full = [c["text"] for c in chat(vllm_server, **common)["bon"]["candidates"]]
    stop = "e"  # the commonest letter: most candidates contain one
    stopped = chat(vllm_server, stop=[stop], **common)["bon"]["candidates"]
    assert sum(stop in text for text in full) >= 4
    for whole, cut in zip(full, stopped, strict=True):
        assert stop not in cut["text"]
        assert cut["text"] == whole.split(stop)[0].strip()
        if stop in whole:
            assert cut["finish_reason"] == "stop"


def test_max_tokens_bounds_every_candidate(vllm_server):
    bon = chat(vllm_server, best_of=6, max_tokens=5, ignore_eos=True, return_candidates=True)["bon"]
    assert [(c["tokens"], c["finish_reason"]) for c in bon["candidates"]] == [(5, "length")] * 6
    bon = chat(vllm_server, best_of=6, max_tokens=3, return_candidates=True)["bon"]
    assert all(c["tokens"] <= 3 for c in bon["candidates"])


def test_streaming_gives_the_non_streamed_answer(vllm_server):
    fields = dict(model="sft", messages=PROMPT, max_tokens=16, seed=21, extra_body={"best_of": 4})
    whole = client(vllm_server).chat.completions.create(**fields)
    chunks = list(client(vllm_server).chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **fields))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_prompt_too_long_for_the_model_is_400(vllm_server):
    long = [{"role": "user", "content": "teddy bear " * 300}]
    response = httpx.post(vllm_server.url + CHAT, json={"model": "sft", "messages": long}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "context of 256 tokens" in error["message"]


def test_a_client_that_disconnects_aborts_its_request_in_the_engine(vllm_server):
    before = scrape(vllm_server)
    body = {"model": "sft", "messages": PROMPT, "best_of": 32, "max_tokens": 230, "ignore_eos": True}
    with Sampler(lambda: engine_requests(vllm_server)) as poller:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(vllm_server.url + CHAT, json=body, timeout=httpx.Timeout(120, read=0.5))
        wait_until(lambda: engine_requests(vllm_server) == 0, 30, "the engine to drop the aborted candidates")
    after = scrape(vllm_server)
    assert poller.peak() == 32, "all 32 candidates were in the engine"
    assert after["bon_requests_cancelled_total"] == before["bon_requests_cancelled_total"] + 1
    # Aborted, not run to the end: vLLM counts none of the 32 as finished by length.
    assert after["vllm:request_success_total/length"] == before["vllm:request_success_total/length"]


def test_concurrent_requests_share_the_engine(vllm_server):
    body = {"best_of": 4, "max_tokens": 100, "ignore_eos": True}
    with Sampler(lambda: engine_requests(vllm_server)) as poller:
        threads = [threading.Thread(target=chat, args=(vllm_server,), kwargs=body) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # One request puts its 4 candidates in the engine; more than 4 at once means requests are batched together.
    assert poller.peak() > 4


def test_early_rejection_aborts_the_cut_candidates_in_the_engine(vllm_server):
    before = scrape(vllm_server)
    bon = chat(vllm_server, max_tokens=200, seed=4, ignore_eos=True, best_of=8, return_candidates=True,
               early_rejection={"after_tokens": 4, "keep": 0.25})["bon"]
    after = scrape(vllm_server)
    cut = bon["early_rejection"]
    assert (cut["started"], cut["kept"], len(cut["cut_tokens"])) == (8, 2, 6)
    assert all(4 <= t < 200 for t in cut["cut_tokens"])
    assert [c["tokens"] for c in bon["candidates"]] == [200, 200]
    assert bon["candidate_tokens"] == 400 + sum(cut["cut_tokens"])
    # Only the two kept candidates ran to max_tokens: the six cut ones were aborted inside the engine.
    assert after["vllm:request_success_total/length"] == before["vllm:request_success_total/length"] + 2


def test_candidates_scored_as_they_finish_keep_their_own_rewards(vllm_server, tiny_checkpoints):
    # Scored one by one while the others decode: each reward must still be its own candidate's.
    bon = chat(vllm_server, max_tokens=48, seed=9, best_of=12, return_candidates=True)["bon"]
    candidates = bon["candidates"]
    assert len({c["tokens"] for c in candidates}) > 1, "the candidates finished at different steps"
    expected = HFReward.load(RewardSpec(path=tiny_checkpoints / "rm")).score_batch(
        [(PROMPT, c["text"]) for c in candidates])
    assert [c["reward"] for c in candidates] == pytest.approx([s.value for s in expected], abs=1e-4)
