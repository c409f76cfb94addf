"""Early rejection and the shared decode loop through the real server (hf backend): what is cut, what it cost,
and that concurrent requests sharing decode steps get the answers they would get alone."""

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
CHAT = "/v1/chat/completions"


def test_early_rejection_finishes_the_kept_fraction_and_counts_every_token(server):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    response = client.chat.completions.create(
        model="sft", messages=PROMPT, max_tokens=24, seed=5,
        extra_body={"best_of": 8, "ignore_eos": True, "return_candidates": True,
                    "early_rejection": {"after_tokens": 4, "keep": 0.25}})
    bon = response.model_extra["bon"]
    cut = bon["early_rejection"]
    assert (cut["after_tokens"], cut["started"], cut["kept"]) == (4, 8, 2)
    # At least 4 tokens each; how many more depends on how long scoring took (the rows decode on meanwhile).
    assert len(cut["cut_tokens"]) == 6 and all(4 <= t <= 24 for t in cut["cut_tokens"])
    assert [c["tokens"] for c in bon["candidates"]] == [24, 24]
    assert bon["candidate_tokens"] == 48 + sum(cut["cut_tokens"])
    assert response.choices[0].message.content == bon["candidates"][bon["candidate_indices"][0]]["text"]


def test_early_rejection_keeps_at_least_n_and_cuts_nothing_when_all_are_kept(server):
    def bon(**fields):
        response = httpx.post(server.url + CHAT, json={"model": "sft", "messages": PROMPT, "max_tokens": 12,
                                                       "ignore_eos": True, **fields}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["bon"]

    kept = bon(n=3, best_of=6, early_rejection={"after_tokens": 2, "keep": 0.1})
    assert kept["early_rejection"]["kept"] == 3 and len(kept["rewards"]) == 3
    everything = bon(best_of=4, early_rejection={"after_tokens": 2, "keep": 1.0})
    assert everything["early_rejection"] is None and everything["candidate_tokens"] == 48
    greedy = bon(best_of=4, temperature=0, early_rejection={"after_tokens": 2, "keep": 0.25})
    assert greedy["early_rejection"] is None and greedy["best_of"] == 1


@pytest.mark.parametrize("rejection", [{"after_tokens": 0, "keep": 0.5}, {"after_tokens": 4, "keep": 0},
                                       {"after_tokens": 4, "keep": 1.5}, {"keep": 0.5}])
def test_bad_early_rejection_is_a_400(server, rejection):
    response = httpx.post(server.url + CHAT, json={"model": "sft", "messages": PROMPT, "best_of": 4,
                                                   "early_rejection": rejection}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_early_rejection_on_a_remote_policy_is_a_400(front):
    response = httpx.post(front.url + CHAT, json={"model": "sft", "messages": PROMPT, "best_of": 4,
                                                  "early_rejection": {"after_tokens": 2, "keep": 0.5}}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "early_rejection"


def test_concurrent_requests_share_decode_steps_and_answer_as_alone(server):
    prompts = [[{"role": "user", "content": text}] for text in
               ("What can I do with my teddy bear today?", "Can I put my teddy bear in the washer?",
                "What is 7 plus 5?", "Suggest a game for a rainy afternoon.")]

    async def answers(concurrently: bool) -> list[str]:
        client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(messages):
            response = await client.chat.completions.create(model="sft", messages=messages, max_tokens=16,
                                                            temperature=0, extra_body={"best_of": 2})
            return response.choices[0].message.content

        if concurrently:
            return list(await asyncio.gather(*(one(m) for m in prompts)))
        return [await one(m) for m in prompts]

    assert asyncio.run(answers(concurrently=True)) == asyncio.run(answers(concurrently=False))
