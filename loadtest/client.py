"""One chat-completion request against any OpenAI-compatible server, streaming or not, measured as a RequestRecord.

A request never raises: an HTTP error is recorded by its status code, a transport failure as `timeout`,
`connect` or `read`, and a 200 whose body is not a chat completion as `bad_response`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

Mode = Literal["bon", "vllm-n"]


@dataclass
class RequestSpec:
    """What to send: one prompt at one sweep point."""

    model: str
    messages: list[dict[str, str]] | str
    """Chat messages for /v1/chat/completions, or a text prompt for /v1/completions."""
    best_of: int
    mode: Mode = "bon"
    stream: bool = True
    max_tokens: int = 64
    temperature: float = 1.0
    ignore_eos: bool = False
    """Sample past end-of-sequence up to max_tokens (vLLM's extension, which our server accepts too), so that every
    answer is as long and two servers are compared on the same work. Sent only when set: not every server knows it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further body fields sent as they are (e.g. `return_candidates`)."""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                                "stream": self.stream}
        body["prompt" if isinstance(self.messages, str) else "messages"] = self.messages
        # Our server reranks best_of candidates into one answer; vLLM returns all n, so the cost of sampling N
        # can be compared with no reranking.
        if self.mode == "bon":
            body["best_of"] = self.best_of
        else:
            body["n"] = self.best_of
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return {**body, **self.extra}


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds; `start` counts from the start of the run."""

    request_id: int
    best_of: int
    start: float = 0.0
    latency: float | None = None
    """End to end: request sent to last byte read. None for transport errors."""
    ttft: float | None = None
    """Time to the first chunk that carries content (streaming only)."""
    itls: list[float] = field(default_factory=list)
    """Gaps between successive content chunks (streaming only)."""
    status: str = ""
    """HTTP status code ("200", "429", ...) or "timeout", "connect", "read", "bad_response"."""
    error: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    """Tokens in the returned choices (`usage.completion_tokens`)."""
    generated_tokens: int | None = None
    """Tokens generated for all candidates: `bon.candidate_tokens`, else `usage.completion_tokens`."""
    choices: int | None = None
    """Choices returned (distinct `index` values): n of vLLM's n=N, the top n of our server's best_of."""
    finish_reasons: list[str] = field(default_factory=list)
    """The returned choices' finish reasons ("length", "stop", ...), in index order."""
    extension: bool = False
    """Whether the answer carried our `bon` object (a server that ignores best_of sends none)."""
    reward: float | None = None
    """Mean of `bon.rewards` over the returned choices (the selected answer's reward when one is returned)."""
    queue_s: float | None = None
    sample_s: float | None = None
    score_s: float | None = None
    device_seconds: float | None = None
    device_source: str = ""
    """"timings" (bon.timings sample + score seconds: device busy time) or "latency" (end to end: an upper bound)."""
    policy_version: str = ""
    rm_version: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "200"


def _read_bon(record: RequestRecord, payload: dict[str, Any]) -> None:
    """Take usage and our `bon` extension from a response body or a stream chunk."""
    usage = payload.get("usage") or {}
    if usage.get("prompt_tokens") is not None:
        record.prompt_tokens = int(usage["prompt_tokens"])
    if usage.get("completion_tokens") is not None:
        record.completion_tokens = int(usage["completion_tokens"])
    ext = payload.get("bon")
    if not isinstance(ext, dict):
        return
    record.extension = True
    if ext.get("candidate_tokens") is not None:
        record.generated_tokens = int(ext["candidate_tokens"])
    rewards = [float(r) for r in ext.get("rewards") or [] if r is not None]
    if rewards:
        record.reward = sum(rewards) / len(rewards)
    timings = ext.get("timings") or {}
    for key in ("queue", "sample", "score"):
        value = timings.get(f"{key}_seconds", timings.get(key))  # our server spells them `sample_seconds`
        if value is not None:
            setattr(record, f"{key}_s", float(value))
    record.policy_version = str(ext.get("policy_version") or record.policy_version)
    record.rm_version = str(ext.get("reward_model_version") or ext.get("rm_version") or record.rm_version)


def _read_choices(record: RequestRecord, choices: list[dict[str, Any]], finished: dict[int, str | None]) -> None:
    """Count the choices of a response, or of a stream so far, and their finish reasons: a stream sends each
    choice's reason once, on its last chunk, and with n > 1 interleaves the choices' chunks."""
    for choice in choices:
        index = int(choice.get("index") or 0)
        if choice.get("finish_reason") or index not in finished:
            finished[index] = choice.get("finish_reason")
    record.choices = len(finished)
    record.finish_reasons = [str(finished[i]) for i in sorted(finished) if finished[i]]


def _finish(record: RequestRecord) -> None:
    if record.generated_tokens is None:
        record.generated_tokens = record.completion_tokens
    if record.sample_s is not None and record.score_s is not None:
        record.device_seconds, record.device_source = record.sample_s + record.score_s, "timings"
    else:
        record.device_seconds, record.device_source = record.latency, "latency"


async def _read_stream(response: httpx.Response, record: RequestRecord, sent: float) -> None:
    """Parse server-sent events: TTFT at the first content delta, ITL between content deltas of the same choice
    (with n > 1, vLLM interleaves the choices' chunks), usage at the end."""
    last: dict[int, float] = {}
    content_chunks = 0
    finished: dict[int, str | None] = {}
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        now = time.perf_counter()
        chunk = json.loads(data)
        if "error" in chunk:
            record.status, record.error = "stream_error", str(chunk["error"])[:200]
            return
        _read_choices(record, chunk.get("choices") or [], finished)
        for choice in chunk.get("choices") or []:
            # A chat chunk's text is its delta's content; a completion chunk's, its `text`.
            if not ((choice.get("delta") or {}).get("content") or choice.get("text")):
                continue
            content_chunks += 1
            index = int(choice.get("index") or 0)
            if record.ttft is None:
                record.ttft = now - sent
            if index in last:
                record.itls.append(now - last[index])
            last[index] = now
        _read_bon(record, chunk)
    if record.completion_tokens is None and content_chunks:
        record.completion_tokens = content_chunks  # no usage chunk: a content delta is about one token


async def send(client: httpx.AsyncClient, url: str, spec: RequestSpec, record: RequestRecord,
               timeout: float, t0: float = 0.0) -> RequestRecord:
    """POST one chat completion to `url` and fill `record`; `timeout` bounds the whole request, not each read."""
    sent = time.perf_counter()
    record.start = sent - t0
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, json=spec.body()) as response:
                record.status = str(response.status_code)
                if response.status_code != 200:
                    record.error = (await response.aread()).decode(errors="replace")[:200]
                elif spec.stream:
                    await _read_stream(response, record, sent)
                else:
                    payload = json.loads(await response.aread())
                    if not payload.get("choices"):
                        raise ValueError("no choices in the response")
                    _read_choices(record, payload["choices"], {})
                    _read_bon(record, payload)
        record.latency = time.perf_counter() - sent
    except (TimeoutError, httpx.TimeoutException):
        record.status, record.error = "timeout", f"no complete answer within {timeout} s"
    except httpx.ConnectError as exc:
        record.status, record.error = "connect", str(exc)[:200]
    except httpx.RequestError as exc:  # other transport, decoding or protocol failures
        record.status, record.error = "read", f"{type(exc).__name__}: {exc}"[:200]
    except (ValueError, AttributeError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        record.status, record.error = "bad_response", f"{type(exc).__name__}: {exc}"[:200]
    if record.ok:
        _finish(record)
    return record
