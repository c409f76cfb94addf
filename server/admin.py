"""The admin API (hot swap): list checkpoints; load one as a named policy or as the reward model; change a
policy's default best_of; unload; roll back. Off (every route 404) unless `admin_key` is set; guarded by it.

A load never touches the request path: the checkpoint is validated (`models.registry`: paths, manifest,
hashes, safetensors, architecture, tokenizer) and loaded in a worker thread, warmed up with one real small
generation and scoring, and only then switched in with one assignment of `state.served`. Requests in flight
keep the snapshot they started with, and a swapped-out backend is closed after its last request
(`state.leases`). A checkpoint that fails is refused with the reason (`LOAD_FAILURES`), a server bug is a 500;
either way the old model serves on.

One admin change at a time: a second one while another runs is answered 409 (`swap_in_progress`, with
Retry-After) at once instead of queueing behind a load that may take minutes; reads are never blocked.
Rollback reloads the version served before (from disk, validated again, and refused if the checkpoint there
has changed since): keeping the old model resident would double the memory every swap needs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType

from fastapi import APIRouter, Depends, FastAPI, Request

from models.checkpoint import CheckpointError, Kind, Manifest
from models.interface import PolicySpec, RewardSpec
from models.loader import load_policy, load_reward
from models.registry import CheckpointNotFound, OutsideRoot, Registry, validate_checkpoint
from server.admin_protocol import (
    BestOf,
    CheckpointList,
    LoadPolicy,
    LoadReward,
    ModelsStatus,
    PolicyStatus,
    PolicySwap,
    RewardStatus,
    SetBestOf,
    Swap,
    SwapTimings,
    Unload,
    Version,
)
from server.errors import APIError, invalid
from server.http import authorize_admin, parse_body
from server.openapi import documented
from server.pipeline import lookup, require_ready
from server.state import PolicyEntry, Served, ServerState, close_reward, warm_up_policy, warm_up_reward

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOAD_FAILURES = (OSError, ValueError, RuntimeError)
"""What validating, loading or warming up a checkpoint raises when the checkpoint is at fault, not the server:
the registry's refusals (`CheckpointError`, a `ValueError`), files that cannot be read (`OSError`), configs that
transformers or vLLM refuse (`ValueError`), weights that do not fit the config, an engine that does not start, a
backend's failure or a warm-up without a finite score (`RuntimeError`, `BackendError` among them). A load that
fails so is refused (400/404); anything else is a server bug, answered 500. Either way the old model serves on."""


@dataclass(frozen=True)
class _Held:
    """A model as a swap handles it: what its leases count, its version, and how it is closed."""

    backend: object
    version: str
    close: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class _Incoming:
    """A loaded model, not serving yet: warmed up, then installed into `Served` (or closed if either fails)."""

    held: _Held
    warm_up: Callable[[], Awaitable[None]]
    install: Callable[[Served], Served]


@dataclass(frozen=True)
class Loaded:
    """One version served under a name: what it is, and enough to load it again."""

    spec: PolicySpec | RewardSpec
    version: str
    checkpoint: str
    """As the operator named it (registry loads) or as configured."""
    from_registry: bool
    """Named through the registry: resolved again (inside the root) when it is loaded again."""
    best_of: int | None = None
    loaded_at: float | None = None

    def describe(self) -> Version:
        return Version(version=self.version, checkpoint=self.checkpoint, loaded_at=self.loaded_at)


class Admin:
    def __init__(self, state: ServerState):
        self.state = state
        self.registry = Registry(state.settings.checkpoints)
        self.policy_history: dict[str, list[Loaded]] = {}
        self.reward_history: list[Loaded] = []
        self._lock = asyncio.Lock()
        self._seeded = False

    # Bookkeeping

    def _seed(self) -> None:
        """The configured models are the first entries of each history."""
        served = self.state.served
        if self._seeded or served is None:
            return
        settings = self.state.settings
        specs = {spec.name: spec for spec in settings.policy_specs()}
        for name, entry in served.policies.items():
            spec = specs[name]
            where = str(spec.path) if spec.path is not None else ",".join(spec.base_urls)
            self.policy_history[name] = [Loaded(spec, entry.version, where, False, entry.default_best_of)]
        reward = settings.reward_spec()
        self.reward_history = [Loaded(reward, served.reward.version, str(reward.path or reward.url), False)]
        self._seeded = True

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if self._lock.locked():
            raise APIError(409, "another admin change is in progress; retry when it is done",
                           code="swap_in_progress", headers={"Retry-After": "1"})
        async with self._lock:
            require_ready(self.state)
            self._seed()
            yield

    def _validate(self, path: Path, kind: Kind, from_registry: bool) -> Manifest:
        return validate_checkpoint(path, kind, within=self.registry.root if from_registry else None)

    def _resolve(self, checkpoint: str) -> Path:
        # Names no file system takes are refused here; the registry would raise them as OSError and ValueError.
        if "\x00" in checkpoint:
            raise invalid("a checkpoint name holds no NUL character", param="checkpoint", code="invalid_checkpoint")
        try:
            return self.registry.resolve(checkpoint)
        except CheckpointError as exc:
            raise _refusal(exc) from None
        except OSError as exc:  # a name too long for the file system: no checkpoint can be there
            raise _refusal(CheckpointNotFound(f"no checkpoint directory can be named so: {exc.strerror}")) from None

    def _check_best_of(self, best_of: int) -> None:
        if best_of > self.state.settings.max_best_of:
            raise invalid(f"best_of must be at most {self.state.settings.max_best_of}", param="best_of")

    # Policies

    async def load_policy(self, name: str, checkpoint: str, best_of: int | None) -> PolicySwap:
        _check_name(name)
        async with self._exclusive():
            settings = self.state.settings
            backend = settings.policy_backend
            if backend == "openai":
                raise invalid("this server's policies are remote (openai backend): checkpoints are loaded with "
                              "the hf or vllm backend", code="unsupported_backend")
            current = require_ready(self.state).policies.get(name)
            best_of = best_of or (current.default_best_of if current else settings.default_best_of)
            self._check_best_of(best_of)
            path = self._resolve(checkpoint)
            spec = PolicySpec(name=name, backend=backend, path=path,
                              options={**settings.policy_options(backend), "allow_unverified": False})
            record, report = await self._swap_policy(name, spec, best_of, checkpoint, from_registry=True)
            self.policy_history.setdefault(name, []).append(record)
            return report

    async def set_best_of(self, name: str, best_of: int) -> BestOf:
        self._check_best_of(best_of)
        async with self._exclusive():
            served = require_ready(self.state)
            entry = lookup(served, name)
            policies = {**served.policies, name: replace(entry, default_best_of=best_of)}
            self.state.switch(replace(served, policies=MappingProxyType(policies)))
            history = self.policy_history.get(name)
            if history:
                history[-1] = replace(history[-1], best_of=best_of)
            return BestOf(name=name, version=entry.version, default_best_of=best_of)

    async def unload_policy(self, name: str) -> Unload:
        async with self._exclusive():
            served = require_ready(self.state)
            entry = lookup(served, name)
            if len(served.policies) == 1:
                raise APIError(409, f"{name!r} is the last policy served; load another one before unloading it",
                               code="last_policy")
            policies = {k: v for k, v in served.policies.items() if k != name}
            self.state.switch(replace(served, policies=MappingProxyType(policies)))
            in_flight = self.state.leases.count(entry.backend)
            await self.state.leases.retire(entry.backend, entry.backend.close)
            log.info("unloaded policy %s (%s); %d requests still finishing on it", name, entry.version, in_flight)
            return Unload(name=name, version=entry.version, in_flight=in_flight)

    async def rollback_policy(self, name: str) -> PolicySwap:
        _check_name(name)
        async with self._exclusive():
            history = self.policy_history.get(name, [])
            loaded = name in require_ready(self.state).policies
            if len(history) < (2 if loaded else 1):
                raise APIError(409, f"policy {name!r} has no previous version to roll back to",
                               code="no_previous_version")
            target = history[-2] if loaded else history[-1]
            spec = target.spec
            if target.from_registry:
                spec = replace(spec, path=self._resolve(target.checkpoint))
            assert isinstance(spec, PolicySpec)
            record, report = await self._swap_policy(name, spec, target.best_of or self.state.settings.default_best_of,
                                                     target.checkpoint, target.from_registry, expect=target.version)
            if loaded:
                history.pop()
            history[-1] = record
            return report

    async def _swap_policy(self, name: str, spec: PolicySpec, best_of: int, checkpoint: str, from_registry: bool,
                           expect: str | None = None) -> tuple[Loaded, PolicySwap]:
        async def load() -> _Incoming:
            backend = await asyncio.to_thread(load_policy, spec)

            async def warm_up() -> None:
                served = require_ready(self.state)
                with self.state.leases.hold(served.reward):
                    await warm_up_policy(name, backend, served.scorer)

            def install(served: Served) -> Served:
                entry = PolicyEntry(backend, best_of, spec.backend)
                return replace(served, policies=MappingProxyType({**served.policies, name: entry}))

            return _Incoming(_Held(backend, backend.version, backend.close), warm_up, install)

        def serving(served: Served) -> _Held | None:
            entry = served.policies.get(name)
            return _Held(entry.backend, entry.version, entry.backend.close) if entry else None

        record, swap = await self._swap("policy", name, spec, checkpoint, from_registry, expect, load, serving)
        return replace(record, best_of=best_of), PolicySwap(**dict(swap), default_best_of=best_of)

    # Reward model

    async def load_reward(self, checkpoint: str) -> Swap:
        async with self._exclusive():
            settings = self.state.settings
            path = self._resolve(checkpoint)
            spec = RewardSpec(backend="hf", path=path, options={"allow_unverified": False, "device": settings.device})
            record, report = await self._swap_reward(spec, checkpoint, from_registry=True)
            self.reward_history.append(record)
            return report

    async def rollback_reward(self) -> Swap:
        async with self._exclusive():
            if len(self.reward_history) < 2:
                raise APIError(409, "the reward model has no previous version to roll back to",
                               code="no_previous_version")
            target = self.reward_history[-2]
            spec = target.spec
            if target.from_registry:
                spec = replace(spec, path=self._resolve(target.checkpoint))
            assert isinstance(spec, RewardSpec)
            record, report = await self._swap_reward(spec, target.checkpoint, target.from_registry,
                                                     expect=target.version)
            self.reward_history.pop()
            self.reward_history[-1] = record
            return report

    async def _swap_reward(self, spec: RewardSpec, checkpoint: str, from_registry: bool,
                           expect: str | None = None) -> tuple[Loaded, Swap]:
        async def load() -> _Incoming:
            reward = await asyncio.to_thread(load_reward, spec)
            scorer = self.state.make_scorer(reward)

            def install(served: Served) -> Served:
                return replace(served, reward=reward, scorer=scorer)

            return _Incoming(_Held(reward, reward.version, partial(close_reward, reward, scorer)),
                             partial(warm_up_reward, scorer), install)

        def serving(served: Served) -> _Held:
            return _Held(served.reward, served.reward.version, partial(close_reward, served.reward, served.scorer))

        return await self._swap("reward", "reward", spec, checkpoint, from_registry, expect, load, serving)

    async def _swap(self, target: Kind, name: str, spec: PolicySpec | RewardSpec, checkpoint: str,
                    from_registry: bool, expect: str | None, load: Callable[[], Awaitable[_Incoming]],
                    serving: Callable[[Served], _Held | None]) -> tuple[Loaded, Swap]:
        """Validate `spec`, `load` it and warm it up off the request path, then switch it in for what `serving`
        finds; the replaced model is closed after its last request. A failure leaves the old model serving."""
        started = time.perf_counter()
        what = f"policy {name!r}" if target == "policy" else "the reward model"
        metrics = self.state.metrics
        incoming = None
        manifest: Manifest | None = None
        try:
            if spec.path is not None:
                manifest = await asyncio.to_thread(self._validate, spec.path, target, from_registry)
                _check_expected(manifest, expect)
            validated = time.perf_counter()
            incoming = await load()
            if manifest is not None and incoming.held.version != manifest.version:
                # The backend loads a copy it verified itself: another version there means the checkpoint was
                # rewritten after the checks above ran on it.
                raise CheckpointError(f"the checkpoint changed while it was loaded: {manifest.version} was checked, "
                                      f"{incoming.held.version} was loaded")
            loaded = time.perf_counter()
            await incoming.warm_up()
        except BaseException as exc:
            if incoming is not None:
                await incoming.held.close()
            metrics.swaps.labels(target=target, result="failed").inc()
            if not isinstance(exc, LOAD_FAILURES):
                raise  # a server bug (a 500, logged with its traceback) or a cancellation, not a refusal
            before = serving(require_ready(self.state))
            still = f"{what} still serves {before.version}" if before else f"nothing is served as {what}"
            log.warning("loading %s as %s failed: %s", checkpoint, what, exc)
            raise _refusal(exc, f"loading {checkpoint!r} as {what} failed", still) from None
        warmed = time.perf_counter()
        current = require_ready(self.state)
        old = serving(current)
        self.state.switch(incoming.install(current))
        switched_at = time.time()
        in_flight = self.state.leases.count(old.backend) if old else 0
        metrics.swaps.labels(target=target, result="ok").inc()
        metrics.swap_duration.labels(target=target).observe(time.perf_counter() - started)
        version, previous = incoming.held.version, old.version if old else None
        log.info("%s now serves %s (was %s; %d requests still finishing on it)", what, version, previous, in_flight)
        if old is not None:
            await self.state.leases.retire(old.backend, old.close)
        timings = SwapTimings(validate_seconds=validated - started, load_seconds=loaded - validated,
                              warmup_seconds=warmed - loaded, total_seconds=time.perf_counter() - started)
        swap = Swap(target=target, name=name, checkpoint=checkpoint, version=version, previous_version=previous,
                    switched_at=switched_at, previous_in_flight=in_flight, timings=timings)
        return Loaded(spec, version, checkpoint, from_registry, loaded_at=switched_at), swap

    # Reads

    def models(self) -> ModelsStatus:
        self._seed()
        served = require_ready(self.state)
        leases = self.state.leases
        policies = {}
        for name, entry in served.policies.items():
            history = self.policy_history.get(name, [])
            policies[name] = PolicyStatus(version=entry.version, backend=entry.backend_kind,
                                          default_best_of=entry.default_best_of,
                                          checkpoint=history[-1].checkpoint if history else None,
                                          in_flight=leases.count(entry.backend),
                                          history=[h.describe() for h in history])
        reward = RewardStatus(version=served.reward.version,
                              checkpoint=self.reward_history[-1].checkpoint if self.reward_history else None,
                              in_flight=leases.count(served.reward),
                              history=[h.describe() for h in self.reward_history])
        unloaded = {name: [h.describe() for h in history] for name, history in self.policy_history.items()
                    if name not in served.policies}
        return ModelsStatus(policies=policies, reward=reward, unloaded=unloaded)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise invalid(f"policy names are 1-64 letters, digits, '.', '_' or '-', not {name!r}", param="name")


def _check_expected(manifest: Manifest, expect: str | None) -> None:
    if expect is not None and manifest.version != expect:
        raise CheckpointError(f"the checkpoint there is now {manifest.version}, not {expect} as when it was served")


def _refusal(exc: BaseException, doing: str = "", still: str = "") -> APIError:
    """The admin's answer to a failed validation or load: what failed, why, and what still serves."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, CheckpointError):
        reason = f"{type(exc).__name__}: {reason}"
    reason = reason[:600]
    message = "; ".join(part for part in (f"{doing}: {reason}" if doing else reason, still) if part)
    if isinstance(exc, OutsideRoot):
        return APIError(400, message, param="checkpoint", code="checkpoint_outside_root")
    if isinstance(exc, CheckpointNotFound):
        return APIError(404, message, param="checkpoint", code="checkpoint_not_found")
    if isinstance(exc, CheckpointError):
        return APIError(400, message, param="checkpoint", code="invalid_checkpoint")
    return APIError(400, message, param="checkpoint", code="load_failed")


def install_admin(app: FastAPI, state: ServerState) -> None:
    """Add the `/admin` routes when an admin key is configured; without one they do not exist (404)."""
    key = state.settings.admin_key
    if not key:
        return
    admin = Admin(state)
    app.state.bon_admin = admin
    settings = state.settings

    async def authorized(request: Request) -> None:
        authorize_admin(request, key)

    router = APIRouter(prefix="/admin", dependencies=[Depends(authorized)])

    @router.get("/checkpoints", response_model=CheckpointList, **documented(400, 401))
    async def checkpoints(verify: bool = False) -> CheckpointList:
        found = await asyncio.to_thread(admin.registry.list, verify)
        return CheckpointList(root=str(admin.registry.root.resolve()), data=found)

    @router.get("/models", response_model=ModelsStatus, **documented(401, 503))
    async def models() -> ModelsStatus:
        return admin.models()

    @router.post("/policies/{name}", response_model=PolicySwap, **documented(401, 404, 409, 503, body=LoadPolicy))
    async def load(name: str, request: Request) -> PolicySwap:
        body = await parse_body(request, LoadPolicy, settings)
        return await admin.load_policy(name, body.checkpoint, body.best_of)

    @router.patch("/policies/{name}", response_model=BestOf, **documented(401, 404, 409, 503, body=SetBestOf))
    async def set_best_of(name: str, request: Request) -> BestOf:
        body = await parse_body(request, SetBestOf, settings)
        return await admin.set_best_of(name, body.best_of)

    @router.delete("/policies/{name}", response_model=Unload, **documented(401, 404, 409, 503))
    async def unload(name: str) -> Unload:
        return await admin.unload_policy(name)

    @router.post("/policies/{name}/rollback", response_model=PolicySwap, **documented(400, 401, 404, 409, 503))
    async def rollback(name: str) -> PolicySwap:
        return await admin.rollback_policy(name)

    @router.post("/reward", response_model=Swap, **documented(401, 404, 409, 503, body=LoadReward))
    async def load_reward_model(request: Request) -> Swap:
        body = await parse_body(request, LoadReward, settings)
        return await admin.load_reward(body.checkpoint)

    @router.post("/reward/rollback", response_model=Swap, **documented(400, 401, 404, 409, 503))
    async def rollback_reward() -> Swap:
        return await admin.rollback_reward()

    app.include_router(router)
