"""What the server serves, and whether it is ready to.

`Served` holds the policy registry (name -> backend and default best_of), the reward model and its
micro-batcher. It is immutable and reached through one reference, `ServerState.served`: a request reads it
once and keeps it, so replacing the reference (hot swap) lets requests in flight finish on the models they
started with while new requests see the new ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from models.backends import GenerationParams, PolicyBackend, RewardBackend, ScoreItem, load_policy, load_reward
from server.admission import Admission
from server.batcher import MicroBatcher
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

WARMUP_MESSAGES = ({"role": "user", "content": "Hello! Can you suggest something fun to do today?"},)


@dataclass(frozen=True)
class PolicyEntry:
    backend: PolicyBackend
    default_best_of: int
    backend_kind: str

    @property
    def version(self) -> str:
        return self.backend.version


@dataclass(frozen=True)
class Served:
    policies: Mapping[str, PolicyEntry]
    reward: RewardBackend
    scorer: MicroBatcher[ScoreItem]

    async def close(self) -> None:
        await self.scorer.stop()
        for entry in self.policies.values():
            await entry.backend.close()
        self.reward.close()


def load_models(settings: Settings) -> tuple[dict[str, PolicyEntry], RewardBackend]:
    """Load every configured policy and the reward model (blocking: call it off the event loop)."""
    resolved = settings.resolved_policies()
    policies = {}
    for spec in settings.policy_specs():
        log.info("loading policy %s (%s backend) from %s", spec.name, spec.backend, spec.path or spec.base_urls)
        best_of = resolved[spec.name].best_of or settings.default_best_of
        policies[spec.name] = PolicyEntry(load_policy(spec), best_of, spec.backend)
    reward_spec = settings.reward_spec()
    log.info("loading reward model (%s backend) from %s", reward_spec.backend, reward_spec.path or reward_spec.url)
    return policies, load_reward(reward_spec)


async def warm_up(served: Served) -> None:
    """One real small generation and scoring per policy: what `/ready` promises."""
    for name, entry in served.policies.items():
        generation = await entry.backend.generate(WARMUP_MESSAGES, 2, GenerationParams(max_tokens=4), 0,
                                                  lambda: False)
        scores = await served.scorer.score([(WARMUP_MESSAGES, c.text) for c in generation.candidates])
        if len(scores) != 2 or not all(math.isfinite(s) for s in scores):
            raise RuntimeError(f"warm-up of policy {name}: the reward model returned {scores}")


class ServerState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(settings.max_in_flight, settings.max_queue, settings.retry_after_s, self.metrics)
        self.served: Served | None = None
        """None until loaded and warmed up; then replaced as a whole, never mutated."""
        self.error: str | None = None
        """Why the server is not ready yet, when something failed."""

    @property
    def ready(self) -> bool:
        return self.served is not None

    def make_scorer(self, reward: RewardBackend) -> MicroBatcher[ScoreItem]:
        scorer: MicroBatcher[ScoreItem] = MicroBatcher(
            reward.score_batch, max_batch=self.settings.rm_max_batch,
            max_wait_s=self.settings.rm_max_wait_ms / 1000, on_batch=self.metrics.observe_batch)
        scorer.start()
        return scorer

    async def start(self, warmup_retry_s: float = 2.0) -> None:
        """Load the models off the event loop, then warm up until it succeeds (a remote may come up later)."""
        try:
            policies, reward = await asyncio.to_thread(load_models, self.settings)
        except Exception as exc:
            self.error = f"loading failed: {type(exc).__name__}: {exc}"
            log.exception("loading the models failed; the server stays unready")
            return
        candidate = Served(MappingProxyType(policies), reward, self.make_scorer(reward))
        while True:
            try:
                await warm_up(candidate)
                break
            except Exception as exc:
                self.error = f"warm-up failed: {type(exc).__name__}: {exc}"
                log.warning("%s; retrying in %.0fs", self.error, warmup_retry_s)
                await asyncio.sleep(warmup_retry_s)
        self.served, self.error = candidate, None
        log.info("ready: policies %s, reward model %s",
                 {name: e.version for name, e in policies.items()}, reward.version)

    async def stop(self) -> None:
        if self.served is not None:
            await self.served.close()
