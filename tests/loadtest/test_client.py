"""One request, against httpx's MockTransport: what is sent per mode, what is read, and failures as records."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from loadtest.client import RequestRecord, RequestSpec, send

URL = "http://test/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]


def _send(handler, spec: RequestSpec, timeout: float = 5.0) -> RequestRecord:
    async def go() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send(client, URL, spec, RequestRecord(request_id=0, best_of=spec.best_of), timeout)

    return asyncio.run(go())


@pytest.mark.parametrize(("mode", "field"), [("bon", "best_of"), ("vllm-n", "n")])
def test_mode_decides_whether_best_of_or_n_is_sent(mode, field):
    body = RequestSpec(model="m", messages=MESSAGES, best_of=8, mode=mode, stream=True,
                       extra={"return_candidates": True}).body()
    assert body[field] == 8 and ({"best_of", "n"} - {field}).isdisjoint(body)
    assert body["stream_options"] == {"include_usage": True} and body["return_candidates"] is True
    assert "stream_options" not in RequestSpec(model="m", messages=MESSAGES, best_of=1, stream=False).body()
    assert "ignore_eos" not in body  # only when asked: a server may refuse fields it does not know
    assert RequestSpec(model="m", messages=MESSAGES, best_of=1, ignore_eos=True).body()["ignore_eos"] is True


def test_a_text_prompt_is_a_completion_whose_streamed_text_is_timed():
    spec = RequestSpec(model="m", messages="Say hello", best_of=2)
    assert spec.body()["prompt"] == "Say hello" and "messages" not in spec.body()
    events = ['data: {"choices": [{"index": 0, "text": "Hel", "finish_reason": null}]}\n\n',
              'data: {"choices": [{"index": 0, "text": "lo", "finish_reason": "stop"}]}\n\n', "data: [DONE]\n\n"]
    r = _send(lambda request: httpx.Response(200, text="".join(events)), spec)
    assert (r.status, r.finish_reasons, r.completion_tokens, len(r.itls)) == ("200", ["stop"], 2, 1)
    assert r.ttft is not None


def test_a_stream_of_interleaved_choices_gives_their_count_and_finish_reasons():
    # as vLLM 0.32 streams n=2: a role chunk per choice, empty deltas while a token is not yet printable, the last
    # token riding on its choice's finish chunk, and usage (all choices' tokens) in a chunk of its own
    def chunk(index: int | None = None, usage: dict | None = None, **delta: object) -> str:
        reason = delta.pop("finish_reason", None)
        choices = [] if index is None else [{"index": index, "delta": delta, "finish_reason": reason}]
        return "data: " + json.dumps({"choices": choices, **({"usage": usage} if usage else {})}) + "\n\n"

    events = [chunk(0, role="assistant", content=""), chunk(1, role="assistant", content=""),
              chunk(0, content="A"), chunk(1, content=""), chunk(0, content="", finish_reason="stop"),
              chunk(1, content="b", finish_reason="length"), chunk(usage={"prompt_tokens": 4, "completion_tokens": 5}),
              "data: [DONE]\n\n"]
    r = _send(lambda request: httpx.Response(200, text="".join(events)),
              RequestSpec(model="m", messages=MESSAGES, best_of=2, mode="vllm-n"))
    assert (r.status, r.choices, r.finish_reasons, r.completion_tokens, r.generated_tokens) == (
        "200", 2, ["stop", "length"], 5, 5)
    assert r.extension is False and r.ttft is not None


def test_bon_extension_with_short_timing_names_gives_device_seconds():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "bon": {"rewards": [1.5], "candidate_tokens": 16, "rm_version": "rm1",
                    "timings": {"queue": 0.5, "sample": 0.25, "score": 0.125, "seconds": 1.0}}})

    r = _send(handler, RequestSpec(model="m", messages=MESSAGES, best_of=8, stream=False))
    assert (r.status, r.completion_tokens, r.generated_tokens, r.reward, r.rm_version) == ("200", 2, 16, 1.5, "rm1")
    assert (r.device_seconds, r.device_source, r.queue_s) == (0.375, "timings", 0.5)
    assert (r.choices, r.finish_reasons, r.extension) == (1, ["stop"], True)


def test_without_the_extension_usage_and_latency_stand_in():
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["n"] == 2
        return httpx.Response(200, json={"choices": [{"index": 0}, {"index": 1}], "usage": {"completion_tokens": 9}})

    r = _send(handler, RequestSpec(model="m", messages=MESSAGES, best_of=2, mode="vllm-n", stream=False))
    assert (r.generated_tokens, r.completion_tokens, r.device_source) == (9, 9, "latency")
    assert r.device_seconds == r.latency


@pytest.mark.parametrize(("response", "status"), [
    (httpx.Response(200, text="not json"), "bad_response"),
    (httpx.Response(200, json={"choices": []}), "bad_response"),
    (httpx.Response(200, text='data: {"error": {"message": "engine died"}}\n\n'), "stream_error"),
    (httpx.Response(503, json={"error": {"message": "busy"}}), "503"),
])
def test_failures_become_records(response, status):
    stream = response.status_code == 200 and "data:" in response.text
    r = _send(lambda request: response, RequestSpec(model="m", messages=MESSAGES, best_of=1, stream=stream))
    assert (r.status, r.ok, r.device_seconds) == (status, False, None)


def test_transport_errors_become_records():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed", request=request)

    spec = RequestSpec(model="m", messages=MESSAGES, best_of=1)
    assert [_send(h, spec).status for h in (refuse, hang, broken)] == ["connect", "timeout", "read"]
    assert _send(refuse, spec).latency is None
