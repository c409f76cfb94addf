"""The remote policy backend: any OpenAI-compatible server (a fleet of `vllm serve` replicas, or another bon).

One chat-completions call with `n` samples per request, sent to one of several base URLs chosen round robin or
by fewest outstanding requests. Transport errors, 429 and 5xx answers are retried on the next replica; a 4xx
is the client's error and is passed back as such. A cancelled request closes its connection, which a vLLM or
bon server takes as a disconnect and stops generating.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import httpx
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from models.chat import prompt_ids
from models.interface import (
    BackendError,
    Cancelled,
    Candidate,
    Generation,
    GenerationParams,
    Message,
    PolicySpec,
    RemoteRequestError,
)

log = logging.getLogger(__name__)

Balance = Literal["round_robin", "least_outstanding"]
_RETRYABLE = {408, 429, 500, 502, 503, 504}


def normalise_base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both become `http://host:8000/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class Balancer:
    """Picks a replica per attempt and counts the requests each one has outstanding."""

    def __init__(self, urls: Sequence[str], policy: Balance = "round_robin"):
        if not urls:
            raise ValueError("at least one base URL is needed")
        self.urls = list(urls)
        self.policy = policy
        self.outstanding = dict.fromkeys(self.urls, 0)
        self._turn = itertools.count()

    def pick(self, avoid: str | None = None) -> str:
        start = next(self._turn)
        order = [self.urls[(start + i) % len(self.urls)] for i in range(len(self.urls))]
        if avoid is not None and len(order) > 1:
            order = [u for u in order if u != avoid]
        if self.policy == "least_outstanding":
            return min(order, key=lambda u: self.outstanding[u])  # ties go to the round-robin order
        return order[0]

    @contextmanager
    def track(self, url: str) -> Iterator[None]:
        self.outstanding[url] += 1
        try:
            yield
        finally:
            self.outstanding[url] -= 1


def _share(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` over items in proportion to positive weights, summing exactly to `total`."""
    raw = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: total - sum(out)]:
        out[i] += 1
    return out


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body.get("message") or body)
    except (ValueError, AttributeError):
        return response.text[:500]


class OpenAIPolicy:
    def __init__(self, name: str, base_urls: Sequence[str], remote_model: str, *, balance: Balance = "round_robin",
                 timeout_s: float = 120.0, retries: int = 2, api_key: str | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, context_length: int | None = None):
        self.name = name
        self.remote_model = remote_model
        self.version = f"remote-{remote_model}"
        self.context_length = context_length
        self.balancer = Balancer([normalise_base_url(u) for u in base_urls], balance)
        self.retries = retries
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
                                         headers=headers, limits=httpx.Limits(max_connections=256))

    @classmethod
    def load(cls, spec: PolicySpec) -> OpenAIPolicy:
        opts = spec.options
        tokenizer = None
        if opts.get("tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(str(opts["tokenizer"]), trust_remote_code=False)
        return cls(spec.name, spec.base_urls, spec.remote_model or spec.name,
                   balance=opts.get("balance", "round_robin"), timeout_s=opts.get("timeout_s", 120.0),
                   retries=opts.get("retries", 2), api_key=opts.get("api_key"), tokenizer=tokenizer,
                   context_length=opts.get("context_length"))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        return len(prompt_ids(self.tokenizer, messages)) if self.tokenizer is not None else None

    async def generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                       cancelled: Callable[[], bool]) -> Generation:
        payload: dict[str, Any] = {"model": self.remote_model, "messages": list(messages), "n": n,
                                   "max_tokens": params.max_tokens, "temperature": params.temperature,
                                   "top_p": params.top_p, "seed": seed}
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.ignore_eos:  # vLLM's extension; sent only when set, so OpenAI itself never sees it
            payload["ignore_eos"] = True
        call = asyncio.ensure_future(self._post_with_retries(payload))
        try:
            while not call.done():
                await asyncio.wait({call}, timeout=0.05)
                if cancelled() and not call.done():
                    call.cancel()
                    raise Cancelled()
        finally:
            if not call.done():
                call.cancel()
        body = call.result()
        return self._parse(body, n)

    async def _post_with_retries(self, payload: dict[str, Any]) -> dict[str, Any]:
        last_error = "no attempt"
        url: str | None = None
        for attempt in range(self.retries + 1):
            url = self.balancer.pick(avoid=url)
            try:
                with self.balancer.track(url):
                    response = await self._client.post(f"{url}/chat/completions", json=payload)
            except httpx.TransportError as exc:
                last_error = f"{url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                last_error = f"{url}: HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in _RETRYABLE:
                    raise RemoteRequestError(_error_message(response))
            log.warning("policy %s attempt %d failed: %s", self.name, attempt + 1, last_error)
            if attempt < self.retries:
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise BackendError(f"policy {self.name}: all {self.retries + 1} attempts failed; last: {last_error}")

    @staticmethod
    def _parse(body: dict[str, Any], n: int) -> Generation:
        choices = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise BackendError(f"the remote server returned {len(choices)} choices for n={n}")
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        usage = body.get("usage") or {}
        # Per-choice token counts are not in the OpenAI response; share the total by text length.
        tokens = _share(int(usage.get("completion_tokens") or 0), [len(t) + 1 for t in texts])
        candidates = [Candidate(text, count, "length" if c.get("finish_reason") == "length" else "stop")
                      for text, count, c in zip(texts, tokens, choices, strict=True)]
        return Generation(candidates, int(usage.get("prompt_tokens") or 0))

    def requests_running(self) -> int:
        return sum(self.balancer.outstanding.values())

    async def close(self) -> None:
        await self._client.aclose()
