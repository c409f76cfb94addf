"""The remote reward backend: a vLLM server's `/classify` or `/pooling` endpoint (or a bon server's `/classify`).

Each candidate goes as vLLM's chat form, `{"model", "messages": [..., assistant answer], "use_activation":
false}`, so the remote server renders its own RM's chat template and returns the raw score, not a sigmoid of it:
`/classify` answers `{"data": [{"probs": [score], ...}], "usage": ...}`, `/pooling` answers
`{"data": [{"data": [score]}], "usage": ...}`, `usage.prompt_tokens` counting what the remote RM read. The chat
form takes one conversation per call, so a batch is sent as concurrent calls; the remote server batches them again
on its side. Each call goes through `models.upstream`: one deadline, a bounded answer, 429s waited out; a malformed
answer is a failure of the server, and the first call that fails for good fails the batch.

`use_activation: false` is what keeps the Bradley-Terry score raw. vLLM 0.32 (checked against
`vllm serve RM --runner pooling`, tests/models/test_reward_vllm.py) otherwise applies the pooler's default
activation on both endpoints: a sigmoid for a one-label model, unless the RM's config says
`problem_type: regression` (bon's RM trainer writes it), which vLLM maps to the identity. A bon server's
`/classify` behaves the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from models.interface import Activation, BackendError, RewardSpec, Score, ScoreItem
from models.upstream import MAX_ANSWER_BYTES, Upstream

log = logging.getLogger(__name__)


def _first_float(value: Any) -> float:
    while isinstance(value, list):
        if not value:
            raise ValueError("an empty score")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float):  # float(True) would be a reward of 1
        raise ValueError(f"a score that is not a number: {value!r}")
    return float(value)


def parse_score(raw: bytes) -> Score:
    """The score in a `/classify` (`probs`) or `/pooling` (`data`) answer, with its `usage.prompt_tokens`;
    ValueError for anything else."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    try:
        item = body["data"][0]
        value = _first_float(item["probs"] if "probs" in item else item["data"])
        tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a /classify or /pooling answer ({type(exc).__name__}: {exc})") from exc
    return Score(value, tokens)


class RemoteReward:
    activation: Activation = "sigmoid"
    """The RM's config is on its server: vLLM's generic one-label default."""
    label: str | None = None
    max_length: int | None = None
    """The remote server knows its RM's context and refuses what exceeds it."""

    def __init__(self, url: str, model: str | None = None, *, timeout_s: float = 60.0, retries: int = 2,
                 api_key: str | None = None, concurrency: int = 32, max_bytes: int = MAX_ANSWER_BYTES):
        self.url = url
        self.model = model
        # Every client sees the version: it stands for the URL, which names internal hosts, without showing it.
        self.version = f"remote-{model}" if model else f"remote-{hashlib.sha256(url.encode()).hexdigest()[:10]}"
        log.info("reward model %s is the remote server at %s", self.version, url)
        self._upstream = Upstream("reward", [url], timeout_s=timeout_s, retries=retries, max_bytes=max_bytes,
                                  api_key=api_key, max_connections=concurrency)
        # `score_batch` is called from a worker thread; its calls run on this backend's own event loop, where each
        # call's deadline holds.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reward-remote", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, spec: RewardSpec) -> RemoteReward:
        if not spec.url:
            raise BackendError("the remote reward backend needs a URL (e.g. http://host:8000/classify)", "reward")
        opts = spec.options
        return cls(spec.url, spec.remote_model, timeout_s=opts.get("timeout_s", 60.0),
                   retries=opts.get("retries", 2), api_key=opts.get("api_key"),
                   max_bytes=opts.get("max_bytes", MAX_ANSWER_BYTES))

    async def _score_one(self, item: ScoreItem) -> Score:
        messages, answer = item
        payload: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": answer}],
                                   "use_activation": False}
        if self.model:
            payload["model"] = self.model
        return await self._upstream.post("", payload, parse_score)

    async def _score_all(self, items: Sequence[ScoreItem]) -> list[Score]:
        calls = [asyncio.ensure_future(self._score_one(item)) for item in items]
        try:
            return list(await asyncio.gather(*calls))
        finally:
            for call in calls:  # after a failure, the batch's other calls stop
                call.cancel()

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        try:
            return asyncio.run_coroutine_threadsafe(self._score_all(items), self._loop).result()
        except concurrent.futures.CancelledError:
            raise BackendError("the remote reward backend was closed while scoring", "reward") from None

    async def _shutdown(self) -> None:
        calls = asyncio.all_tasks() - {asyncio.current_task()}
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await self._upstream.aclose()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
