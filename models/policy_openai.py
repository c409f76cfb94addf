"""The remote policy backend: any OpenAI-compatible server (a fleet of `vllm serve` replicas, or another bon).

One chat-completions call with `n` samples per request, sent to one of several base URLs chosen round robin or
by fewest outstanding requests, through `models.upstream`: one deadline per call, a bounded answer, failures retried
on another replica, 429s honoured, and a 4xx other than 401/403/404 passed back as the client's error. An answer
that is not a chat completion with `n` choices is a failure of that replica. A cancelled request closes its
connection, which a vLLM or bon server takes as a disconnect and stops generating.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from models.chat import prompt_ids
from models.interface import (
    Cancelled,
    Candidate,
    EarlyRejection,
    Finished,
    Generation,
    GenerationParams,
    Message,
    PolicySpec,
    RemoteRequestError,
)
from models.upstream import EJECT_S, MAX_ANSWER_BYTES, Balance, Upstream


def normalise_base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both become `http://host:8000/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def _share(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` over items in proportion to positive weights, summing exactly to `total`."""
    raw = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: total - sum(out)]:
        out[i] += 1
    return out


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    index: int = 0
    message: _Message = _Message()
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)


class _Completion(BaseModel):
    """The part of a chat completion read here; validating an answer against it is what tells a malformed one."""

    choices: list[_Choice]
    usage: _Usage | None = None


class OpenAIPolicy:
    supports_early_rejection = False

    def __init__(self, name: str, base_urls: Sequence[str], remote_model: str, *, balance: Balance = "round_robin",
                 timeout_s: float = 120.0, retries: int = 2, api_key: str | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, context_length: int | None = None,
                 max_bytes: int = MAX_ANSWER_BYTES, eject_s: float = EJECT_S):
        self.name = name
        self.remote_model = remote_model
        self.version = f"remote-{remote_model}"
        self.context_length = context_length
        self.upstream = Upstream("policy", [normalise_base_url(u) for u in base_urls], balance=balance,
                                 timeout_s=timeout_s, retries=retries, max_bytes=max_bytes, api_key=api_key,
                                 eject_s=eject_s)
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, spec: PolicySpec) -> OpenAIPolicy:
        opts = spec.options
        tokenizer = None
        if opts.get("tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(str(opts["tokenizer"]), trust_remote_code=False,
                                                      local_files_only=True)
        return cls(spec.name, spec.base_urls, spec.remote_model or spec.name,
                   balance=opts.get("balance", "round_robin"), timeout_s=opts.get("timeout_s", 120.0),
                   retries=opts.get("retries", 2), api_key=opts.get("api_key"), tokenizer=tokenizer,
                   context_length=opts.get("context_length"), max_bytes=opts.get("max_bytes", MAX_ANSWER_BYTES),
                   eject_s=opts.get("eject_s", EJECT_S))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        return len(prompt_ids(self.tokenizer, messages)) if self.tokenizer is not None else None

    async def generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                       cancelled: Callable[[], bool], rejection: EarlyRejection | None = None,
                       finished: Finished | None = None) -> Generation:
        # One answer holds every candidate: `finished` is never called.
        if rejection is not None:
            raise RemoteRequestError("early rejection needs the hf or vllm policy backend", "policy")
        payload: dict[str, Any] = {"model": self.remote_model, "messages": list(messages), "n": n,
                                   "max_tokens": params.max_tokens, "temperature": params.temperature,
                                   "top_p": params.top_p, "seed": seed}
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.ignore_eos:  # vLLM's extension; sent only when set, so OpenAI itself never sees it
            payload["ignore_eos"] = True
        call = asyncio.ensure_future(self.upstream.post("/chat/completions", payload, lambda raw: _parse(raw, n)))
        try:
            while not call.done():
                await asyncio.wait({call}, timeout=0.05)
                if cancelled() and not call.done():
                    call.cancel()
                    raise Cancelled()
        finally:
            if not call.done():
                call.cancel()
        return call.result()

    def requests_running(self) -> int:
        return sum(self.upstream.balancer.outstanding.values())

    async def close(self) -> None:
        await self.upstream.aclose()


def _parse(raw: bytes, n: int) -> Generation:
    """A chat completion's `n` choices as candidates; ValueError for any other answer."""
    body = _Completion.model_validate_json(raw)
    choices = sorted(body.choices, key=lambda c: c.index)
    if len(choices) != n:
        raise ValueError(f"{len(choices)} choices for n={n}")
    texts = [c.message.content or "" for c in choices]
    usage = body.usage or _Usage()
    # Per-choice token counts are not in the OpenAI response; share the total by text length.
    tokens = _share(usage.completion_tokens or 0, [len(t) + 1 for t in texts])
    candidates = [Candidate(text, count, "length" if c.finish_reason == "length" else "stop")
                  for text, count, c in zip(texts, tokens, choices, strict=True)]
    return Generation(candidates, usage.prompt_tokens or 0)
