"""What the server serves, and whether it is ready to.

`Served` holds the policy registry (name -> backend and default best_of), the reward model and its
micro-batcher. It is immutable and reached through one reference, `ServerState.served`: a request reads it
once and keeps it, so replacing the reference (hot swap, `ServerState.switch`) lets requests in flight finish
on the models they started with while new requests see the new ones. `Leases` counts the requests using each
backend, so a swapped-out backend is closed (its memory released) after its last request, not before.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from models.interface import GenerationParams, PolicyBackend, RewardBackend, Score, ScoreItem, require_finite
from models.loader import load_policy, load_reward
from server.admission import Admission
from server.batcher import MicroBatcher
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

NotReady = Literal["loading", "loading_failed", "warmup_failed", "scorer_failed", "shutting_down"]

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
    scorer: MicroBatcher[ScoreItem, Score]

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


def load_guard(settings: Settings) -> RewardBackend | None:
    """The held-out reward that scores each chosen answer, when `--guard` names one (blocking)."""
    if settings.guard is None:
        return None
    log.info("loading the guard (%s)", settings.guard)
    return load_reward(settings.guard_spec())


async def warm_up_policy(name: str, backend: PolicyBackend, scorer: MicroBatcher[ScoreItem, Score]) -> None:
    """One real small generation, scored: raises if either fails (the scorer refuses a non-finite reward)."""
    generation = await backend.generate(WARMUP_MESSAGES, 2, GenerationParams(max_tokens=4), 0, lambda: False)
    if len(generation.candidates) != 2:
        raise RuntimeError(f"warm-up of policy {name}: asked for 2 answers, got {len(generation.candidates)}")
    await scorer.score([(WARMUP_MESSAGES, c.text) for c in generation.candidates])


async def warm_up_reward(scorer: MicroBatcher[ScoreItem, Score]) -> None:
    """One real small scoring batch: raises unless it gives one finite score per answer (the scorer's checks)."""
    answers = ("Sure! You could build a pillow fort together.", "No.")
    await scorer.score([(WARMUP_MESSAGES, a) for a in answers])


async def warm_up(served: Served) -> None:
    """One real small generation and scoring per policy: what `/ready` promises."""
    for name, entry in served.policies.items():
        await warm_up_policy(name, entry.backend, served.scorer)


class Leases:
    """In-flight requests per backend; a retired backend is closed when its count drops to zero.

    Everything runs on the event loop, so taking a lease right after reading `ServerState.served` (with no
    await in between) cannot race with a swap retiring that backend.
    """

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._counts: collections.Counter[int] = collections.Counter()
        self._retired: dict[int, Callable[[], Awaitable[None]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def count(self, backend: object) -> int:
        return self._counts[id(backend)]

    @contextmanager
    def hold(self, *backends: object) -> Iterator[None]:
        keys = [id(b) for b in backends]
        self._counts.update(keys)
        try:
            yield
        finally:
            for key in keys:
                self._counts[key] -= 1
                if self._counts[key] <= 0:
                    del self._counts[key]
                    close = self._retired.pop(key, None)
                    if close is not None:
                        task = asyncio.get_running_loop().create_task(self._close(close))
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)

    async def retire(self, backend: object, close: Callable[[], Awaitable[None]]) -> None:
        """Close `backend` now if no request uses it, else after the last one that does."""
        if self._counts[id(backend)] == 0:
            await self._close(close)
            return
        self._retired[id(backend)] = close
        self._metrics.draining.set(len(self._retired))

    async def _close(self, close: Callable[[], Awaitable[None]]) -> None:
        self._metrics.draining.set(len(self._retired))
        try:
            await close()
        except Exception:
            log.exception("closing a swapped-out backend failed")

    async def close_all(self) -> None:
        """Close every retired backend now (server shutdown)."""
        retired, self._retired = list(self._retired.values()), {}
        for close in retired:
            await self._close(close)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def close_reward(reward: RewardBackend, scorer: MicroBatcher[ScoreItem, Score]) -> None:
    await scorer.stop()
    reward.close()


class ServerState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.leases = Leases(self.metrics)
        self.admission = Admission(settings.max_in_flight, settings.max_queue, settings.inflight_token_budget(),
                                   settings.retry_after_s, self.metrics)
        self.served: Served | None = None
        """None until loaded and warmed up; then replaced as a whole, never mutated."""
        self.reason: NotReady = "loading"
        """Why the server is not ready yet, as a code any client may see."""
        self.error: str | None = None
        """The failure behind `reason`, when something failed: for the log and the admin, as it may name paths
        and URLs."""
        self.guard: RewardBackend | None = None
        """The held-out reward scoring each chosen answer (`--guard`); loaded at start, never swapped."""
        # One thread for the guard: a model and its tokenizer are not safe to share between threads.
        self._guard_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard")
        self.shutting_down = False
        """Set on SIGTERM: the requests in flight finish, new ones are refused (`unready`)."""

    @property
    def ready(self) -> bool:
        return self.served is not None

    def unready(self) -> tuple[NotReady, str | None] | None:
        """Why the server takes no requests now, and the failure behind it when one is known; None when it does."""
        if self.shutting_down:
            return "shutting_down", None
        if self.served is None:
            return self.reason, self.error
        if self.served.scorer.failure is not None:
            return "scorer_failed", self.served.scorer.failure
        return None

    async def score_guard(self, items: Sequence[ScoreItem]) -> list[Score]:
        """The guard's scores of `items`, on its own thread (calls queue there, one at a time)."""
        assert self.guard is not None
        return await asyncio.get_running_loop().run_in_executor(self._guard_thread, self.guard.score_batch, items)

    def make_scorer(self, reward: RewardBackend) -> MicroBatcher[ScoreItem, Score]:
        def on_batch(size: int, seconds: float) -> None:
            self.metrics.observe_batch(size, seconds, reward.version)

        # Admitted requests have one job each of at most max_best_of items waiting, and an admin swap's warm-up
        # one more: the bound is never reached through admission, it caps what gets past it.
        settings = self.settings
        scorer: MicroBatcher[ScoreItem, Score] = MicroBatcher(
            reward.score_batch, max_batch=settings.rm_max_batch, max_wait_s=settings.rm_max_wait_ms / 1000,
            max_pending=(settings.max_in_flight + 1) * settings.max_best_of, on_batch=on_batch,
            check=require_finite, on_restart=self.metrics.rm_worker_restarts.inc)
        scorer.start()
        return scorer

    def switch(self, served: Served) -> None:
        """Serve `served` from the next request on (atomic: one reference replaced on the event loop)."""
        self.served = served
        self.metrics.publish_loaded({name: e.version for name, e in served.policies.items()}, served.reward.version)

    async def start(self, warmup_retry_s: float = 2.0) -> None:
        """Load the models off the event loop, then warm up until it succeeds (a remote may come up later)."""
        try:
            policies, reward = await asyncio.to_thread(load_models, self.settings)
            self.guard = await asyncio.to_thread(load_guard, self.settings)
        except Exception as exc:
            self.reason, self.error = "loading_failed", f"loading failed: {type(exc).__name__}: {exc}"
            log.exception("loading the models failed; the server stays unready")
            return
        candidate = Served(MappingProxyType(policies), reward, self.make_scorer(reward))
        while True:
            try:
                await warm_up(candidate)
                break
            except Exception as exc:
                self.reason, self.error = "warmup_failed", f"warm-up failed: {type(exc).__name__}: {exc}"
                log.warning("%s; retrying in %.0fs", self.error, warmup_retry_s)
                await asyncio.sleep(warmup_retry_s)
        self.switch(candidate)
        self.error = None
        log.info("ready: policies %s, reward model %s",
                 {name: e.version for name, e in policies.items()}, reward.version)

    async def stop(self) -> None:
        self._guard_thread.shutdown(wait=False, cancel_futures=True)
        if self.guard is not None:
            self.guard.close()
        if self.served is not None:
            await self.served.close()
        await self.leases.close_all()
