"""Remote backends against real servers: a bon server whose policy and reward model are another bon server.

The front server's policy backend is `openai` over two replicas, one of them dead (so every request also
exercises failover), and its reward backend is `remote` on the main server's vLLM-compatible `/classify`.
"""

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

PROMPT = [{"role": "user", "content": "Can you suggest an activity for the old cat?"}]


def requests_answered(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "bon_requests"]
    return sum(s.value for s in family.samples if s.name == "bon_requests_total")


def test_classify_speaks_vllms_shape(server):
    conversation = [*PROMPT, {"role": "assistant", "content": "You could read a short story."}]
    raw = httpx.post(server.url + "/classify", json={"messages": conversation, "use_activation": False}).json()
    squashed = httpx.post(server.url + "/classify", json={"model": "rm", "messages": conversation}).json()
    assert raw["object"] == "list" and raw["data"][0]["num_classes"] == 1 and raw["data"][0]["index"] == 0
    (score,) = raw["data"][0]["probs"]
    (probability,) = squashed["data"][0]["probs"]
    assert 0 < probability < 1 and probability == pytest.approx(1 / (1 + 2.718281828459045 ** -score))
    bad = httpx.post(server.url + "/classify", json={"messages": PROMPT * 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_a_bon_server_serves_through_another(server, front):
    before = requests_answered(server)
    c = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    response = c.chat.completions.create(model="sft", messages=PROMPT, max_tokens=10, seed=5,
                                         extra_body={"return_candidates": True})
    bon = response.model_extra["bon"]
    assert bon["policy_version"] == "remote-sft" and bon["reward_model_version"].startswith("remote-")
    assert len(bon["candidates"]) == 3 and bon["rewards"][0] == max(x["reward"] for x in bon["candidates"])
    assert response.usage.prompt_tokens > 0 and bon["candidate_tokens"] > 0
    assert requests_answered(server) == before + 1  # one call with n=3 to the policy replica
    # The remote reward is the main server's raw RM score for the same conversation.
    best = bon["candidates"][bon["candidate_indices"][0]]["text"]
    direct = httpx.post(server.url + "/classify", json={
        "messages": [*PROMPT, {"role": "assistant", "content": best}], "use_activation": False}).json()
    assert direct["data"][0]["probs"][0] == pytest.approx(bon["rewards"][0], abs=1e-5)
    streamed = c.chat.completions.create(model="sft", messages=PROMPT, max_tokens=10, seed=5, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == \
        response.choices[0].message.content


def test_every_request_survives_the_dead_replica(front):
    c = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    for _ in range(4):
        assert c.chat.completions.create(model="sft", messages=PROMPT, max_tokens=4).choices
    assert "ConnectError" in front.logs()


def test_the_remote_servers_refusal_is_the_clients_400(front):
    response = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                          json={"model": "sft", "messages": PROMPT, "max_tokens": 250})
    assert response.status_code == 400 and "context" in response.json()["error"]["message"]
