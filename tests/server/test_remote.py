"""Remote backends against real servers: a bon server whose policy and reward model are another bon server, and
one whose remote servers misbehave on demand.

The front server's policy backend is `openai` over two replicas, one of them dead (so every request also
exercises failover), and its reward backend is `remote` on the main server's vLLM-compatible `/classify`. The
wary server's are tests/server/bad_upstream.py, which drips, floods, garbles, throttles or refuses as told.
"""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.servers import Server
from tests.builders import launch_server, script_server
from tests.server import bad_upstream

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


# Remote servers that misbehave: tests/server/bad_upstream.py, each request's prompt saying how.

CHAT = "/v1/chat/completions"
DEADLINE_S = 3
EJECT_S = 3.0


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with script_server(bad_upstream.__file__, "/health", tmp_path_factory.mktemp("bad-upstream") / "server.log") as up:
        yield up


def _in_front_of(bad: Server, replicas: dict[str, str], log_dir: Path, config: Path, *args: str) -> Server:
    """A bon server whose policies are on replicas of `bad` ({policy: replica letters}), its RM on replica r."""
    policies = "".join(f"[policies.{name}]\nbase_urls = {json.dumps([f'{bad.url}/{r}/v1' for r in names])}\n"
                       for name, names in replicas.items())
    reward = f'[reward]\nbackend = "remote"\nurl = "{bad.url}/r/classify"\n'
    config.write_text(f'policy_backend = "openai"\n{policies}{reward}')
    return launch_server(Path("/nonexistent"), log_dir, "--config", str(config), "--upstream-timeout-s",
                         str(DEADLINE_S), "--upstream-max-bytes", "65536", "--default-best-of", "1", *args)


@pytest.fixture(scope="module")
def wary(bad: Server, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A bon server in front of `bad`: policy `pair` on replicas a and b, `pool` on c and d, `lone` on e alone;
    its RM is replica r. Each policy has a balancer, so a replica kept aside after a 429 is kept aside by its own.
    A replica that failed is not set aside (`--upstream-eject-s 0`): each test sees the round robin alone."""
    config = tmp_path_factory.mktemp("wary") / "serve.toml"
    with _in_front_of(bad, {"pair": "ab", "pool": "cd", "lone": "e"}, log_dir, config, "--upstream-eject-s",
                      "0") as server:
        yield server.wait(timeout_s=60)


@pytest.fixture(scope="module")
def ejecting(bad: Server, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """As `wary`, with policy `pair` on replicas f and g, and a replica that failed set aside for `EJECT_S`."""
    config = tmp_path_factory.mktemp("ejecting") / "serve.toml"
    with _in_front_of(bad, {"pair": "fg"}, log_dir, config, "--upstream-eject-s", str(EJECT_S)) as server:
        yield server.wait(timeout_s=60)


def ask(server: Server, model: str, prompt: str, request_id: str = "wary-test") -> httpx.Response:
    return httpx.post(server.url + CHAT, timeout=30, headers={"X-Request-Id": request_id},
                      json={"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4})


def calls(bad: Server, prompt: str) -> list[tuple[str, float]]:
    """The calls `bad` got with this prompt: (replica, time)."""
    return [(replica, at) for replica, at in httpx.get(bad.url + "/calls", params={"prompt": prompt}).json()]


def failed(response: httpx.Response, status: int, message: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] == message
    return error


@pytest.mark.parametrize(("prompt", "role"), [("drip a=drip b=drip", "policy"), ("drip r=drip", "reward")])
def test_an_answer_that_drips_in_is_cut_at_the_deadline(bad, wary, prompt, role):
    started = time.monotonic()
    response = ask(wary, "pair", prompt)
    assert time.monotonic() - started < DEADLINE_S + 5  # each byte comes well within the read timeout
    failed(response, 502, f"the {role} backend failed (request id wary-test)")


@pytest.mark.parametrize("answer", ["huge", "notjson", "shape"])
def test_a_bad_answer_fails_over_to_the_next_replica(bad, wary, answer):
    # Two requests in a row: at least one of them asks replica a first, whatever the round robin's turn.
    prompt = f"failover a={answer} b=ok"
    for _ in range(2):
        response = ask(wary, "pair", prompt)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "answer from b"
    assert [replica for replica, _ in calls(bad, prompt) if replica == "a"]


def test_a_failing_replica_is_asked_first_by_every_other_request_not_by_all(bad, wary):
    # Round robin takes one turn a request: a retry at b does not move the next request's start back onto a.
    prompt = "turns a=500 b=ok"
    for _ in range(6):
        assert ask(wary, "pair", prompt).status_code == 200
    assert [replica for replica, _ in calls(bad, prompt)].count("a") == 3


def test_a_failed_replica_is_set_aside_then_asked_again(bad, ejecting):
    """After its failure, replica f is asked by no request for `EJECT_S` (six requests take well under that), then
    asked again in its turn."""
    prompt = "aside f=500 g=ok"
    for _ in range(6):
        assert ask(ejecting, "pair", prompt).status_code == 200
    assert [replica for replica, _ in calls(bad, prompt)].count("f") == 1
    time.sleep(EJECT_S)
    prompt = "back f=ok g=ok"
    for _ in range(2):
        assert ask(ejecting, "pair", prompt).status_code == 200
    assert sorted(replica for replica, _ in calls(bad, prompt) if replica != "r") == ["f", "g"]  # r: the RM


@pytest.mark.parametrize("answer", ["huge", "notjson", "shape"])
def test_a_bad_reward_answer_is_a_502(bad, wary, answer):
    failed(ask(wary, "pair", f"reward r={answer}"), 502, "the reward backend failed (request id wary-test)")


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_a_failing_upstream_is_a_502_that_shows_the_client_no_internals(bad, wary, status):
    """401/403/404 are a misconfiguration here, not the client's fault; what the upstream said and where it is
    stay in the log."""
    response = ask(wary, "pair", f"fails a={status} b={status}", request_id=f"fails-{status}")
    error = failed(response, 502, f"the policy backend failed (request id fails-{status})")
    assert error["code"] == "upstream_error"
    assert bad_upstream.SECRET not in response.text and bad.url not in response.text
    logged = [line for line in wary.logs().splitlines() if f"request fails-{status}:" in line]
    assert logged and bad_upstream.SECRET in logged[0] and f"{bad.url}/a/v1" in logged[0]


def test_a_busy_replica_is_left_alone_until_its_retry_after(bad, wary):
    prompt = "busy c=429:30 d=ok"
    for _ in range(4):
        response = ask(wary, "pool", prompt)
        assert response.json()["choices"][0]["message"]["content"] == "answer from d"
    assert [replica for replica, _ in calls(bad, prompt)].count("c") == 1


def test_a_lone_busy_server_is_waited_for_within_the_deadline(bad, wary):
    prompt = "busy once r=429once:1"
    assert ask(wary, "pair", prompt).status_code == 200
    first, second = [at for replica, at in calls(bad, prompt) if replica == "r"]
    assert 1.0 <= second - first < DEADLINE_S


def test_a_server_busy_past_the_deadline_is_a_503_with_its_retry_after(bad, wary):
    prompt = "busy long e=429:60"
    response = ask(wary, "lone", prompt)
    error = failed(response, 503, "the policy server is busy; retry later (request id wary-test)")
    assert error["code"] == "upstream_busy" and response.headers["retry-after"] == "60"
    assert len(calls(bad, prompt)) == 1  # not asked again before its Retry-After


def test_the_reward_version_stands_for_the_url_without_showing_it(bad, wary):
    ready = httpx.get(wary.url + "/ready")
    assert re.fullmatch(r"remote-[0-9a-f]{10}", ready.json()["reward_model"]) and bad.url not in ready.text
    assert f"{bad.url}/r/classify" in wary.logs()
