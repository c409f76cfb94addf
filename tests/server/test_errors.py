"""Every refusal in OpenAI's envelope with the right status: 400, 401, 404, 413, 429, 503; never 422 or 500."""

import asyncio
import math
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.servers import Server
from tests.builders import BROKEN_ADMIN_KEY, POISON, wait_until, wait_until_async

PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
CHAT = "/v1/chat/completions"


def envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def rejections(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "bon_rejections"]
    return {s.labels["reason"]: s.value for s in family.samples if s.name == "bon_rejections_total"}


def gauge(server, name: str) -> float:
    """A metric's value summed over its labels (a counter by its name without `_total`)."""
    text = httpx.get(server.url + "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return sum(s.value for s in family.samples if s.name in (name, name + "_total"))


def _chat(**fields) -> dict:
    return {"model": "sft", "messages": PROMPT, "max_tokens": 4, **fields}


def _classify(answer: str) -> dict:
    return {"messages": [*PROMPT, {"role": "assistant", "content": answer}], "use_activation": False}


@pytest.mark.parametrize(("body", "param"), [
    (_chat(messages=[]), "messages"),
    ({"model": "sft"}, "messages"),
    ({"messages": PROMPT}, "model"),
    (_chat(temperature="hot"), "temperature"),
    (_chat(temperature=2.5), "temperature"),
    (_chat(top_p=0), "top_p"),
    (_chat(max_tokens=0), "max_tokens"),
    (_chat(max_tokens=100_000), "max_tokens"),
    (_chat(max_completion_tokens=100_000), "max_completion_tokens"),
    (_chat(n=3, best_of=2), "n"),
    (_chat(n=9), "n"),
    (_chat(best_of=33), "best_of"),
    (_chat(best_of=0), "best_of"),
    (_chat(selection="majority"), "selection"),
    (_chat(selection="soft", selection_temperature=0), "selection_temperature"),
    (_chat(logprobs=True), "logprobs"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (_chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), None),
    (_chat(stream_options={"include_usage": True}), "stream_options"),
    (_chat(stop=["s"] * 5), "stop"),
    (_chat(stop="s" * 65), "stop"),
    (_chat(seed="abc"), "seed"),
    (_chat(max_tokens=250), "messages"),  # prompt + max_tokens exceed the tiny model's 256 positions
])
def test_invalid_chat_requests_are_400(server, body, param):
    error = envelope(httpx.post(server.url + CHAT, json=body, timeout=30), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("raw", [b'{"model": "sft", "messages": ', b"", b"[]", b"\xff\xfe", b'"just a string"'])
def test_malformed_bodies_are_400(server, raw):
    response = httpx.post(server.url + CHAT, content=raw, headers={"content-type": "application/json"})
    envelope(response, 400)


def test_invalid_legacy_completions_are_400(server):
    body = {"model": "sft", "prompt": ["one", "two"], "max_tokens": 4}
    assert envelope(httpx.post(server.url + "/v1/completions", json=body), 400)["param"] == "prompt"
    body = {"model": "sft", "prompt": "hi", "echo": True}
    assert envelope(httpx.post(server.url + "/v1/completions", json=body), 400)["param"] == "echo"


def test_openai_client_sees_bad_requests_as_such(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="sft", messages=PROMPT, n=5, extra_body={"best_of": 2})
    assert info.value.body["param"] == "n"


def test_unknown_model_and_route_are_404(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="gpt-9", messages=PROMPT)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    envelope(httpx.get(server.url + "/v1/nothing"), 404)
    envelope(httpx.get(server.url + CHAT), 405)


def test_api_keys(strict, api_key):
    assert envelope(httpx.post(strict.url + CHAT, json=_chat()), 401)["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer nope"}
    assert envelope(httpx.post(strict.url + CHAT, json=_chat(), headers=wrong), 401)["type"] == "authentication_error"
    envelope(httpx.get(strict.url + "/v1/models", headers=wrong), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict.url + "/v1", api_key="nope", max_retries=0).models.list()
    good = openai.OpenAI(base_url=strict.url + "/v1", api_key=api_key, max_retries=0)
    assert good.chat.completions.create(model="sft", messages=PROMPT, max_tokens=4).choices
    assert httpx.get(strict.url + "/health").status_code == 200  # probes need no key
    assert rejections(strict)["invalid_api_key"] >= 3


@pytest.mark.parametrize("token", ["Bearer ключ".encode(), "Bearer sk-tést".encode("latin-1"), b"Bearer \xff\xfe"])
def test_a_key_outside_ascii_is_401_not_500(strict, token):
    for method, path in (("POST", CHAT), ("GET", "/v1/models"), ("POST", "/classify")):
        response = httpx.request(method, strict.url + path, headers={"Authorization": token},
                                 json=_chat() if method == "POST" else None)
        assert envelope(response, 401)["code"] == "invalid_api_key", path


def test_too_long_prompt_is_400(strict, api_key):
    long = [{"role": "user", "content": "What can I do with my teddy bear today? " * 6}]
    response = httpx.post(strict.url + CHAT, json=_chat(messages=long), headers={"Authorization": f"Bearer {api_key}"})
    error = envelope(response, 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


def test_too_large_body_is_413_before_parsing(strict, api_key):
    auth = {"Authorization": f"Bearer {api_key}"}
    big = b'{"model": "sft", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
    assert envelope(httpx.post(strict.url + CHAT, content=big, headers=auth), 413)["code"] == "body_too_large"
    # Without a Content-Length (chunked), the limit is enforced while reading.
    chunked = httpx.post(strict.url + CHAT, content=iter([big[:3000], big[3000:]]), headers=auth)
    envelope(chunked, 413)


def test_admission_full_is_429_with_retry_after(strict, api_key):
    body = _chat(max_tokens=200, temperature=2.0, best_of=32)

    async def run():
        async with httpx.AsyncClient(base_url=strict.url, headers={"Authorization": f"Bearer {api_key}"},
                                     timeout=60) as c:
            return await asyncio.gather(*(c.post(CHAT, json=body) for _ in range(6)))

    responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 1 and statuses.count(429) >= 3, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert envelope(refused, 429)["code"] == "queue_full" and refused.headers["retry-after"] == "2"
    assert rejections(strict)["queue_full"] >= 3


def test_not_ready_is_503(broken):
    assert httpx.get(broken.url + "/health").status_code == 200
    # Still loading is a 503 too; then a stable reason says why it never gets ready, and only the admin key
    # also sees the failure behind it (the verification error, with the checkpoint's path).
    wait_until(lambda: "(loading_failed)" in envelope(httpx.get(broken.url + "/ready"), 503)["message"], 60,
               "the reward model's verification to fail")
    public = envelope(httpx.get(broken.url + "/ready"), 503)
    assert public["code"] == "not_ready" and "sha256" not in public["message"] and "/" not in public["message"]
    admin = envelope(httpx.get(broken.url + "/ready", headers={"Authorization": f"Bearer {BROKEN_ADMIN_KEY}"}), 503)
    assert "(loading_failed)" in admin["message"] and "sha256" in admin["message"]
    response = httpx.post(broken.url + CHAT, json=_chat())
    assert envelope(response, 503)["type"] == "service_unavailable" and "retry-after" in response.headers
    envelope(httpx.get(broken.url + "/v1/models"), 503)


async def _queue_behind_a_holder_then_leave(c: httpx.AsyncClient, strict: Server, holding: dict, path: str,
                                            body: dict) -> tuple[asyncio.Task[httpx.Response], float]:
    """Take the strict server's one slot with `holding`, then queue `body` at `path` and go away: returns the
    holder's task and the cancelled count from before, once the queued request has left the queue."""
    holder = asyncio.create_task(c.post(CHAT, json=holding))
    await wait_until_async(lambda: gauge(strict, "bon_requests_in_flight") == 1, 30, "the holder to take the slot")
    before = gauge(strict, "bon_requests_cancelled")
    with pytest.raises(httpx.ReadTimeout):
        await c.post(path, json=body, timeout=httpx.Timeout(60, read=0.1))
    await wait_until_async(lambda: gauge(strict, "bon_requests_queued") == 0
                           and gauge(strict, "bon_requests_cancelled") == before + 1, 10,
                           f"the queued {path} request to leave the queue")
    return holder, before


def test_a_queued_client_that_disconnects_leaves_the_queue(strict, api_key):
    auth = {"Authorization": f"Bearer {api_key}"}
    long = _chat(max_tokens=200, temperature=2.0, best_of=32)

    async def run():
        async with httpx.AsyncClient(base_url=strict.url, headers=auth, timeout=60) as c:
            holder, before = await _queue_behind_a_holder_then_leave(c, strict, long, CHAT, long)
            return (await holder).status_code, before

    status, before = asyncio.run(run())
    assert status == 200
    assert gauge(strict, "bon_requests_cancelled") == before + 1


def test_classify_is_admitted_and_cancelled_like_a_completion(strict, api_key):
    """With the one slot taken, a `/classify` waits in the one-place queue (and leaves it when its client goes);
    of a burst arriving together, those beyond the slot and the queue are refused with 429."""
    auth = {"Authorization": f"Bearer {api_key}"}
    holding = _chat(max_tokens=230, best_of=32, ignore_eos=True)  # 32 × 230 tokens: the slot is held a while
    answer = _classify("You could read a short story together.")

    async def run():
        async with httpx.AsyncClient(base_url=strict.url, headers=auth, timeout=60) as c:
            holder, _ = await _queue_behind_a_holder_then_leave(c, strict, holding, "/classify", answer)
            flood = await asyncio.gather(*(c.post("/classify", json=answer) for _ in range(6)))
            await holder
            return flood

    flood = asyncio.run(run())
    statuses = sorted(r.status_code for r in flood)
    assert set(statuses) == {200, 429} and statuses.count(429) >= 4, statuses  # one slot, one place in the queue
    refused = next(r for r in flood if r.status_code == 429)
    assert envelope(refused, 429)["code"] == "queue_full" and refused.headers["retry-after"] == "2"


def test_huge_prompts_are_refused_by_their_characters_and_health_keeps_answering(server):
    """Tokenizing a MiB takes about a second: a prompt that cannot fit by its characters alone is refused
    untokenized, and the prompts that are tokenized are tokenized off the event loop."""
    huge = _chat(messages=[{"role": "user", "content": "What can I do today? " * 45_000}])  # under the 1 MiB body limit

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            async def health() -> float:
                started = time.perf_counter()
                assert (await c.get("/health")).status_code == 200
                return time.perf_counter() - started

            idle = [await health() for _ in range(3)]
            posts = asyncio.gather(*(c.post(CHAT, json=huge) for _ in range(6)))
            loaded = [await health()]
            while not posts.done():
                loaded.append(await health())
            return idle, loaded, await posts

    idle, loaded, responses = asyncio.run(run())
    for response in responses:
        error = envelope(response, 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        assert "has 945000 characters" in error["message"]  # counted, not tokenized
    assert max(loaded) < 0.5, f"/health took {max(loaded):.2f} s beside 6 huge prompts ({max(idle):.3f} s idle)"


def test_a_conversation_longer_than_the_rm_reads_is_400_and_its_batch_is_scored(server):
    """Too long for the RM: refused (never scored truncated), alone; the calls scored in the same micro-batch
    get their scores."""
    too_long = "You could read a short story. " * 60  # 1800 characters, over 256 tokens

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/classify", json=_classify(a)) for a in (
                "Sure!", "You could go for a walk.", too_long, "A nice idea is to have a picnic.", "No.")))

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 400, 200, 200], statuses
    error = envelope(responses[2], 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "reads at most 256" in error["message"]
    assert all(math.isfinite(r.json()["data"][0]["probs"][0]) for r in responses if r.status_code == 200)
    by_characters = envelope(httpx.post(server.url + "/classify", json=_classify("x" * 9000)), 400)
    assert by_characters["code"] == "context_length_exceeded" and "characters" in by_characters["message"]


def test_a_non_finite_reward_is_502_for_its_own_request_only(poisoned):
    """The RM scores NaN for one of the calls scored together: that call is a 502, the others are answered."""
    answers = [f"You could read {k} short stories." for k in range(6)]
    answers[3] = f"You could read {POISON} short stories."

    async def run():
        async with httpx.AsyncClient(base_url=poisoned.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/classify", json=_classify(a)) for a in answers))

    def forward_passes() -> float:
        text = httpx.get(poisoned.url + "/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "bon_rm_batch_size_count")

    before = forward_passes()
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 200, 502, 200, 200]
    assert forward_passes() - before < len(answers), "the poisoned call was scored apart from the others"
    error = envelope(responses[3], 502)
    assert error["type"] == error["code"] == "upstream_error"
    assert "non-finite reward (nan)" in poisoned.logs()  # what failed is for the operator
    assert all(math.isfinite(r.json()["data"][0]["probs"][0]) for r in responses if r.status_code == 200)


def test_a_config_file_names_the_policies_and_their_best_of(strict, api_key):
    c = openai.OpenAI(base_url=strict.url + "/v1", api_key=api_key, max_retries=0)
    cards = {m.id: m.model_extra["bon"] for m in c.models.list().data}
    assert {name: card["default_best_of"] for name, card in cards.items()} == {"sft": 2, "twin": 3}
    assert cards["sft"]["version"] == cards["twin"]["version"]
    for name, best_of in (("sft", 2), ("twin", 3)):
        r = c.chat.completions.create(model=name, messages=PROMPT, max_tokens=4)
        assert r.model == name and r.model_extra["bon"]["best_of"] == best_of
