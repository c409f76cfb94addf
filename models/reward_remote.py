"""The remote reward backend: a vLLM server's `/classify` or `/pooling` endpoint (or a bon server's `/classify`).

Each candidate goes as vLLM's chat form, `{"model", "messages": [..., assistant answer], "use_activation":
false}`, so the remote server renders its own RM's chat template and returns the raw score, not a sigmoid of it:
`/classify` answers `{"data": [{"probs": [score], ...}], "usage": ...}`, `/pooling` answers
`{"data": [{"data": [score]}], "usage": ...}`, `usage.prompt_tokens` counting what the remote RM read. The chat
form takes one conversation per call, so a batch is sent as concurrent calls; the remote server batches them again
on its side.

`use_activation: false` is what keeps the Bradley-Terry score raw. vLLM 0.32 (checked against
`vllm serve RM --runner pooling`, tests/models/test_reward_vllm.py) otherwise applies the pooler's default
activation on both endpoints: a sigmoid for a one-label model, unless the RM's config says
`problem_type: regression` (bon's RM trainer writes it), which vLLM maps to the identity. A bon server's
`/classify` behaves the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from models.interface import Activation, BackendError, RewardSpec, Score, ScoreItem

_RETRYABLE = {408, 429, 500, 502, 503, 504}


def _first_float(value: Any) -> float:
    while isinstance(value, list):
        if not value:
            raise BackendError("the remote reward server returned an empty score")
        value = value[0]
    return float(value)


def parse_score(body: dict[str, Any]) -> Score:
    """The score in a `/classify` (`probs`) or `/pooling` (`data`) response, with its `usage.prompt_tokens`."""
    try:
        item = body["data"][0]
        value = _first_float(item["probs"] if "probs" in item else item["data"])
        tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise BackendError(f"unexpected reward response: {str(body)[:300]}") from exc
    return Score(value, tokens)


class RemoteReward:
    activation: Activation = "sigmoid"
    """The RM's config is on its server: vLLM's generic one-label default."""
    label: str | None = None

    def __init__(self, url: str, model: str | None = None, *, timeout_s: float = 60.0, retries: int = 2,
                 api_key: str | None = None, concurrency: int = 32):
        self.url = url
        self.model = model
        self.version = f"remote-{model or url}"
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)), headers=headers,
                                    limits=httpx.Limits(max_connections=concurrency))
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reward-remote")

    @classmethod
    def load(cls, spec: RewardSpec) -> RemoteReward:
        if not spec.url:
            raise BackendError("the remote reward backend needs a URL (e.g. http://host:8000/classify)")
        opts = spec.options
        return cls(spec.url, spec.remote_model, timeout_s=opts.get("timeout_s", 60.0),
                   retries=opts.get("retries", 2), api_key=opts.get("api_key"))

    def _score_one(self, item: ScoreItem) -> Score:
        messages, answer = item
        payload: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": answer}],
                                   "use_activation": False}
        if self.model:
            payload["model"] = self.model
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return parse_score(response.json())
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in _RETRYABLE:
                    break
            if attempt < self.retries:
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise BackendError(f"reward server {self.url} failed: {last_error}")

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        return list(self._pool.map(self._score_one, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
