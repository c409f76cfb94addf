"""Target (b): bon's own pipeline in this process, hf backend, no HTTP.

The objects `bon serve` builds, built the same way: `ServerState` loads the policy and the reward model through
`models.loader` (HFPolicy, HFReward), starts the reward model's micro-batcher and warms up. Each request is
validated and planned by `server.pipeline.plan_request` and answered by `server.pipeline.best_of_n`, as the
endpoint does once the HTTP body is parsed and a slot admitted. What (c) adds to this is HTTP, parsing,
admission and the JSON response: the overhead the benchmark reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from bench.stats import Timing
from server import protocol
from server.pipeline import DisconnectWatcher, best_of_n, lookup, plan_request, require_ready
from server.settings import load_settings
from server.state import ServerState

POLICY = "sft"
"""The name the benchmark serves its policy under, in process and over HTTP."""


class InProcessPipeline:
    """Use as a context manager: it loads and warms up on entry, and closes the models on exit."""

    def __init__(self, settings: dict[str, Any]):
        self.state = ServerState(load_settings(**settings))
        self._runner = asyncio.Runner()
        # A request with no client behind it: nobody disconnects, so sampling is never cancelled.
        self._watcher = DisconnectWatcher(Request({"type": "http"}))

    def __enter__(self) -> InProcessPipeline:
        self._runner.run(self.state.start(warmup_retry_s=0.1))
        require_ready(self.state, detail=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self.state.stop())
        finally:
            self._runner.close()

    async def _answer(self, body: dict[str, Any]) -> Timing:
        arrived = time.perf_counter()
        served = require_ready(self.state)
        entry = lookup(served, body["model"])
        plan = plan_request(protocol.ChatCompletionRequest.model_validate(body), "chat", entry, self.state.settings)
        outcome = await best_of_n(served, entry, plan, self._watcher, arrived, 0.0)
        t = outcome.timings
        return Timing(latency_s=time.perf_counter() - arrived, sample_s=t.sample_seconds, score_s=t.score_seconds,
                      tokens=sum(c.tokens for c in outcome.generation.candidates), total_s=t.total_seconds)

    def __call__(self, body: dict[str, Any]) -> Timing:
        """One request body, as a client would post it, answered in process."""
        return self._runner.run(self._answer(body))


def request_body(messages: Sequence[dict[str, str]], n: int, seed: int, max_tokens: int,
                 temperature: float) -> dict[str, Any]:
    """A chat completion that asks bon for Best-of-`n` with every candidate `max_tokens` long."""
    return {"model": POLICY, "messages": list(messages), "best_of": n, "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, "ignore_eos": True}
