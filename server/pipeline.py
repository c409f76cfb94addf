"""The one request pipeline of both completion endpoints: validate -> admit -> sample -> score -> select -> respond.

Chat and legacy completions differ only in how the prompt becomes messages and in the response's shape;
streaming and non-streaming differ only in the last step. The winner is chosen after all N candidates are
scored, so a stream starts once everything is generated: its time to first token is the whole request's
sampling and scoring time, and the text then arrives at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from models.interface import (
    BackendError,
    Cancelled,
    Candidate,
    ContextLengthExceeded,
    EarlyRejection,
    Generation,
    GenerationParams,
    Message,
    RemoteRequestError,
    Score,
    UpstreamBusy,
    require_finite,
)
from server import protocol as p
from server.access import current_request_id
from server.batcher import BatcherFull
from server.errors import APIError, invalid
from server.http import authorize, parse_body
from server.selection import Strategy, select
from server.settings import Settings
from server.state import PolicyEntry, Served, ServerState

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completion"]
PROMPT_PARAM: dict[Endpoint, str] = {"chat": "messages", "completion": "prompt"}
MAX_CHARS_PER_TOKEN = 32
"""More characters than any tokenizer puts in one token on average over a text (English prose is about 4, code
and whitespace runs under 10): a text with more characters than its token limit times this is over the limit,
known without tokenizing it (about a second per MiB, which a client could otherwise make the server spend)."""


@dataclass(frozen=True)
class Plan:
    """A validated request, in the terms the backends speak."""

    endpoint: Endpoint
    policy: str
    messages: list[Message]
    n: int
    best_of: int
    params: GenerationParams
    seed: int
    selection: Strategy
    selection_temperature: float
    return_candidates: bool
    stream: bool
    include_usage: bool
    early_rejection: tuple[int, int] | None = None
    """(after_tokens, candidates kept) when the request asked for early rejection and it cuts any."""

    @property
    def samples(self) -> int:
        """Candidates sampled: `best_of`, but one at temperature 0, where every candidate would be the same."""
        return 1 if self.params.temperature == 0 else self.best_of

    @property
    def cost(self) -> int:
        """What the request holds of the admission budget: the most tokens it may generate."""
        return self.samples * self.params.max_tokens


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    policy_version: str
    reward_version: str
    generation: Generation
    rewards: list[float]
    chosen: list[int]
    timings: p.BonTimings
    guard_reward: float | None = None
    """The guard's reward of the first chosen answer (`--guard`), else None."""


# Validate

_NOT_READY = {"loading": "the models are loading and warming up", "shutting_down": "it is shutting down"}
"""What a reason not to be ready says by itself, where no failure is behind it."""


def require_ready(state: ServerState, detail: bool = False) -> Served:
    """The models served now, or a 503 that says why not as a stable reason (`ServerState.unready`); the failure
    behind it, which may name paths and URLs, only with `detail` (a caller holding the admin key)."""
    unready = state.unready()
    if unready is None:
        assert state.served is not None
        return state.served
    reason, error = unready
    why = error if detail and error else _NOT_READY.get(reason, "the server's log says why")
    raise APIError(503, f"the server is not ready ({reason}): {why}", code="not_ready",
                   headers={"Retry-After": str(state.settings.retry_after_s)})


def lookup(served: Served, model: str) -> PolicyEntry:
    entry = served.policies.get(model)
    if entry is None:
        raise APIError(404, f"the model {model!r} does not exist; served: {', '.join(sorted(served.policies))}",
                       param="model", code="model_not_found")
    return entry


def to_messages(messages: list[p.ChatMessage]) -> list[Message]:
    """Plain role/content dicts for a chat template ("developer" is OpenAI's new name for "system")."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def _messages(req: p.ChatCompletionRequest | p.CompletionRequest) -> list[Message]:
    if isinstance(req, p.ChatCompletionRequest):
        return to_messages(req.messages)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise invalid("one prompt per request", param="prompt")
        prompt = prompt[0]
    # Served policies are chat models: a legacy prompt is one user turn.
    return [{"role": "user", "content": prompt}]


def plan_request(req: p.ChatCompletionRequest | p.CompletionRequest, endpoint: Endpoint, entry: PolicyEntry,
                 settings: Settings) -> Plan:
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise invalid(f"{param} must be at most {settings.max_tokens}", param=param)
    n = req.n or 1
    if n > settings.max_n:
        raise invalid(f"n must be at most {settings.max_n}", param="n")
    best_of = req.best_of if req.best_of is not None else max(entry.default_best_of, n)
    if best_of > settings.max_best_of:
        raise invalid(f"best_of must be at most {settings.max_best_of}", param="best_of")
    if n > best_of:
        raise invalid(f"n ({n}) must not exceed best_of ({best_of})", param="n")
    if req.early_rejection is not None and not entry.backend.supports_early_rejection:
        raise invalid(f"early_rejection needs the hf or vllm policy backend; {req.model!r} is served by another",
                      param="early_rejection")
    if req.stream_options is not None and not req.stream:
        raise invalid("stream_options is only allowed with stream: true", param="stream_options")
    stop = tuple(s for s in ([req.stop] if isinstance(req.stop, str) else req.stop or []) if s)
    params = GenerationParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                              top_p=1.0 if req.top_p is None else req.top_p, stop=stop, ignore_eos=req.ignore_eos)
    plan = Plan(endpoint=endpoint, policy=req.model, messages=_messages(req), n=n, best_of=best_of, params=params,
                seed=req.seed if req.seed is not None else random.SystemRandom().randrange(2**63),
                selection=req.selection, selection_temperature=req.selection_temperature,
                return_candidates=req.return_candidates, stream=req.stream,
                include_usage=bool(req.stream_options and req.stream_options.include_usage))
    if req.early_rejection is not None:
        keep = max(n, math.ceil(req.early_rejection.keep * best_of))
        if keep < plan.samples:  # else nothing is cut: every candidate is kept, or one is sampled (temperature 0)
            plan = replace(plan, early_rejection=(req.early_rejection.after_tokens, keep))
    budget = settings.inflight_token_budget()
    if plan.cost > budget:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise invalid(f"{plan.samples} candidates of up to {max_tokens} tokens are {plan.cost} tokens, more than the "
                      f"server runs at once ({budget}): this request could never run; ask for fewer candidates "
                      "(best_of) or tokens", param=param, code="request_too_large")
    return plan


def choose(plan: Plan, texts: Sequence[str], rewards: Sequence[float]) -> list[int]:
    """The candidates the request returns, in choice order (`select`); `n` times the one candidate sampled at
    temperature 0."""
    if plan.samples == 1:
        return [0] * plan.n
    return select(plan.selection, texts, rewards, plan.n, temperature=plan.selection_temperature,
                  rng=random.Random(plan.seed))


def refuse_by_characters(messages: Sequence[Message], max_tokens: int, what: str, why: str, param: str) -> None:
    """400 `context_length_exceeded` when the contents of `messages` have more characters than `max_tokens`
    tokens can hold (`MAX_CHARS_PER_TOKEN` each): the cheap check before any tokenizing."""
    chars = sum(len(m["content"]) for m in messages)
    if chars > max_tokens * MAX_CHARS_PER_TOKEN:
        raise invalid(f"{what} has {chars} characters, more than {max_tokens} tokens can hold ({why})",
                      param=param, code="context_length_exceeded")


def check_prompt_chars(entry: PolicyEntry, plan: Plan, settings: Settings) -> None:
    """`refuse_by_characters` at the prompt's token limit: `max_prompt_tokens`, and what the policy's context
    leaves beside `max_tokens`."""
    limit, why = settings.max_prompt_tokens, "the limit on prompt tokens"
    context = entry.backend.context_length
    if context is not None and context - plan.params.max_tokens < limit:
        limit = max(context - plan.params.max_tokens, 0)
        why = f"what the model's context of {context} tokens leaves beside max_tokens ({plan.params.max_tokens})"
    refuse_by_characters(plan.messages, limit, "the prompt", why, PROMPT_PARAM[plan.endpoint])


def check_prompt_length(entry: PolicyEntry, plan: Plan, settings: Settings) -> None:
    """The prompt's exact length checks, in the policy's tokens (blocking: run it off the event loop)."""
    count = entry.backend.count_prompt_tokens(plan.messages)
    if count is None:  # a remote policy without a local tokenizer: its server enforces its own limit
        return
    param = PROMPT_PARAM[plan.endpoint]
    if count > settings.max_prompt_tokens:
        raise invalid(f"the prompt has {count} tokens; at most {settings.max_prompt_tokens} are accepted",
                      param=param, code="context_length_exceeded")
    context = entry.backend.context_length
    if context is not None and count + plan.params.max_tokens > context:
        raise invalid(f"the prompt ({count} tokens) plus max_tokens ({plan.params.max_tokens}) exceeds the "
                      f"model's context of {context} tokens", param=param, code="context_length_exceeded")


# Sample, score, select


CLIENT_TIMEOUT_HEADER = "x-stainless-read-timeout"
"""Where the official openai clients send their timeout, in seconds, with every request."""


def request_timeout(request: Request, settings: Settings) -> float:
    """The seconds a completion may take: `request_timeout_s`, or the client's own timeout when it is shorter (a
    client that will have given up by then needs no answer, and behind a proxy its leaving may never be seen)."""
    try:
        client = float(request.headers.get(CLIENT_TIMEOUT_HEADER, "inf"))
    except ValueError:
        client = math.inf
    return min(settings.request_timeout_s, client) if client > 0 else settings.request_timeout_s


class DisconnectWatcher:
    """Sets `gone` when the client disconnects; `cancelled()`, which the sampler polls between decode steps, is
    true from then on, and from the deadline on (`timeout_s` after `since`, a `time.perf_counter()`)."""

    def __init__(self, request: Request, timeout_s: float = math.inf, since: float | None = None,
                 interval_s: float = 0.05):
        self.request = request
        self.timeout_s = timeout_s
        self.deadline = (time.perf_counter() if since is None else since) + timeout_s
        self.interval_s = interval_s
        self.gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def expired(self) -> bool:
        return time.perf_counter() >= self.deadline

    def cancelled(self) -> bool:
        return self.gone.is_set() or self.expired()

    async def _watch(self) -> None:
        while not await self.request.is_disconnected():
            await asyncio.sleep(self.interval_s)
        self.gone.set()

    async def until_gone(self, work: Awaitable[Any]) -> Any:
        """Await `work`, or cancel it and raise `Cancelled` if the client goes or the deadline passes first."""
        task, gone = asyncio.ensure_future(work), asyncio.ensure_future(self.gone.wait())
        left = self.deadline - time.perf_counter()
        try:
            await asyncio.wait({task, gone}, timeout=left if math.isfinite(left) else None,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            finished = task.done()
            if not finished:  # the client left, or this request itself is being cancelled
                task.cancel()
        if not finished:
            raise Cancelled()
        return task.result()

    async def __aenter__(self) -> DisconnectWatcher:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def best_of_n(served: Served, entry: PolicyEntry, plan: Plan, watcher: DisconnectWatcher,
                    arrived: float, queue_seconds: float) -> Outcome:
    started = time.perf_counter()
    rejection = None
    if plan.early_rejection is not None:

        async def score_partial(texts: list[str]) -> list[float]:
            return [s.value for s in await served.scorer.score([(plan.messages, t) for t in texts])]

        rejection = EarlyRejection(*plan.early_rejection, score=score_partial)
    # Candidates handed over as they finish are scored while the others decode (the vllm backend), so that
    # scoring hides behind decoding; the rest are scored in one batch once all are done.
    early: dict[int, asyncio.Future[list[Score]]] = {}

    def finished(index: int, candidate: Candidate) -> None:
        early[index] = asyncio.ensure_future(served.scorer.score([(plan.messages, candidate.text)]))

    try:
        generation = await entry.backend.generate(plan.messages, plan.samples, plan.params, plan.seed,
                                                  watcher.cancelled, rejection, None if rejection else finished)
        sampled = time.perf_counter()
        late = [i for i in range(len(generation.candidates)) if i not in early]
        batch = served.scorer.score([(plan.messages, generation.candidates[i].text) for i in late])
        try:
            scores = dict(zip(late, await watcher.until_gone(batch), strict=True)) if late else {}
            for i, future in early.items():
                (scores[i],) = await watcher.until_gone(future)
        except Cancelled:  # stopped while scoring: every token generated was spent for nothing
            raise Cancelled(tokens=_generated_tokens(generation)) from None
    finally:
        for future in early.values():
            future.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, so a failure already raised is not reported twice
    rewards = [scores[i].value for i in range(len(generation.candidates))]
    scored = time.perf_counter()
    chosen = choose(plan, [c.text for c in generation.candidates], rewards)
    timings = p.BonTimings(queue_seconds=queue_seconds, sample_seconds=sampled - started,
                           score_seconds=scored - sampled, total_seconds=time.perf_counter() - arrived)
    return Outcome(plan, entry.version, served.reward.version, generation, rewards, chosen, timings)


# Respond


def _bon_info(o: Outcome) -> p.BonInfo:
    candidates = None
    if o.plan.return_candidates:
        candidates = [p.BonCandidate(index=i, text=c.text, reward=r, finish_reason=c.finish_reason, tokens=c.tokens)
                      for i, (c, r) in enumerate(zip(o.generation.candidates, o.rewards, strict=True))]
    return p.BonInfo(policy=o.plan.policy, policy_version=o.policy_version, reward_model_version=o.reward_version,
                     best_of=o.plan.samples, selection=o.plan.selection, seed=o.plan.seed,
                     rewards=[o.rewards[i] for i in o.chosen], candidate_indices=o.chosen,
                     reward_mean=sum(o.rewards) / len(o.rewards),
                     candidate_tokens=_generated_tokens(o.generation), early_rejection=_rejection_info(o),
                     candidates=candidates, timings=o.timings, guard_reward=o.guard_reward)


def _generated_tokens(g: Generation) -> int:
    """Every token the request cost: its candidates', and those of the candidates early rejection cut."""
    return sum(c.tokens for c in g.candidates) + sum(g.rejected_tokens)


def _rejection_info(o: Outcome) -> p.BonEarlyRejection | None:
    if o.plan.early_rejection is None:
        return None
    after_tokens, kept = o.plan.early_rejection
    return p.BonEarlyRejection(after_tokens=after_tokens, started=o.plan.samples, kept=len(o.generation.candidates),
                               cut_tokens=o.generation.rejected_tokens)


def _usage(o: Outcome) -> p.Usage:
    completion = sum(o.generation.candidates[i].tokens for i in o.chosen)
    prompt = o.generation.prompt_tokens
    return p.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def respond_json(o: Outcome) -> JSONResponse:
    winners = [o.generation.candidates[i] for i in o.chosen]
    common: dict[str, Any] = dict(model=o.plan.policy, system_fingerprint=o.policy_version, usage=_usage(o),
                                  bon=_bon_info(o))
    body: p.ChatCompletionResponse | p.CompletionResponse
    if o.plan.endpoint == "chat":
        body = p.ChatCompletionResponse(choices=[
            p.ChatChoice(index=k, message=p.ChatMessageOut(content=c.text), finish_reason=c.finish_reason)
            for k, c in enumerate(winners)], **common)
    else:
        body = p.CompletionResponse(choices=[p.CompletionChoice(index=k, text=c.text, finish_reason=c.finish_reason)
                                             for k, c in enumerate(winners)], **common)
    return JSONResponse(body.model_dump(mode="json"))


def _pieces(text: str) -> list[str]:
    """Word-sized pieces (with their trailing spaces) that concatenate back to the text."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _sse(chunk: p.ChatCompletionChunk | p.CompletionChunk, include_usage: bool) -> str:
    data = chunk.model_dump(mode="json")
    if data["bon"] is None:
        del data["bon"]
    if not include_usage:
        del data["usage"]
    return f"data: {json.dumps(data)}\n\n"


async def stream_events(o: Outcome) -> AsyncIterator[str]:
    """OpenAI's chunk format: per choice an opening chunk (the first one carries `bon`), word-sized content
    chunks and a finish chunk; then the usage chunk when asked for, then `data: [DONE]`."""
    chat = o.plan.endpoint == "chat"
    head: dict[str, Any] = dict(id=p.new_id("chatcmpl" if chat else "cmpl"), created=int(time.time()),
                                model=o.plan.policy, system_fingerprint=o.policy_version)

    def chunk(k: int, text: str, finish: str | None = None, opening: bool = False,
              bon: p.BonInfo | None = None) -> str:
        if chat:
            delta = p.ChunkDelta(role="assistant" if opening else None, content=None if finish else text)
            body: p.ChatCompletionChunk | p.CompletionChunk = p.ChatCompletionChunk(
                choices=[p.ChatChunkChoice(index=k, delta=delta, finish_reason=finish)], bon=bon, **head)
        else:
            body = p.CompletionChunk(choices=[p.CompletionChoice(index=k, text=text, finish_reason=finish)], bon=bon,
                                     **head)
        return _sse(body, o.plan.include_usage)

    bon = _bon_info(o)
    for k, i in enumerate(o.chosen):
        candidate = o.generation.candidates[i]
        yield chunk(k, "", opening=True, bon=bon if k == 0 else None)
        for piece in _pieces(candidate.text) if candidate.text else []:
            yield chunk(k, piece)
        yield chunk(k, "", finish=candidate.finish_reason)
    if o.plan.include_usage:
        cls = p.ChatCompletionChunk if chat else p.CompletionChunk
        yield _sse(cls(choices=[], usage=_usage(o), **head), True)
    yield "data: [DONE]\n\n"


def _record(state: ServerState, o: Outcome, arrived: float) -> None:
    m, plan = state.metrics, o.plan
    best = o.rewards[o.chosen[0]]
    policy = {"policy": plan.policy, "version": o.policy_version}
    both = {**policy, "reward_version": o.reward_version}
    m.request_duration.labels(**policy, best_of=str(plan.samples)).observe(time.perf_counter() - arrived)
    m.queue_wait.observe(o.timings.queue_seconds)
    m.sample_duration.labels(**policy).observe(o.timings.sample_seconds)
    m.score_duration.labels(reward_version=o.reward_version).observe(o.timings.score_seconds)
    m.requests.labels(**both, endpoint=plan.endpoint).inc()
    m.candidates.labels(**policy).inc(len(o.generation.candidates))
    m.tokens.labels(**policy).inc(_generated_tokens(o.generation))
    m.prompt_tokens.labels(**policy).inc(o.generation.prompt_tokens)
    m.selected_reward.labels(**both).observe(best)
    m.reward_gain.labels(**both).observe(best - sum(o.rewards) / len(o.rewards))
    if o.guard_reward is not None:
        guarded = {"policy": plan.policy, "version": o.policy_version, "reward_version": o.reward_version,
                   "best_of": str(plan.samples)}
        m.guard_reward.labels(**guarded).observe(o.guard_reward)
        m.guard_gap.labels(**guarded).observe(best - o.guard_reward)


@contextmanager
def backend_errors(state: ServerState, param: str, watcher: DisconnectWatcher | None = None) -> Iterator[None]:
    """What the backends raise for a request, as the API answers it (every endpoint that samples or scores);
    `param` names the request's field that a too-long input came in; `watcher`, the request's own, tells a
    request stopped at its deadline (408) from one whose client went away (499)."""
    try:
        yield
    except Cancelled as exc:
        if watcher is not None and watcher.expired() and not watcher.gone.is_set():
            state.metrics.cancelled_tokens.labels(reason="timeout").inc(exc.tokens)
            log.info("request past its time limit of %g s; generation and scoring of it stopped", watcher.timeout_s)
            raise APIError(408, f"the request did not finish within its time limit of {watcher.timeout_s:g} s (the "
                           "server's, or the client's own timeout where shorter)", code="timeout") from None
        state.metrics.cancelled_tokens.labels(reason="client_closed").inc(exc.tokens)
        state.metrics.cancelled.inc()
        log.info("client went away; generation and scoring of its request stopped")
        raise APIError(499, "the client closed the request", code="client_closed") from None
    except ContextLengthExceeded as exc:
        raise invalid(str(exc), param=param, code="context_length_exceeded") from None
    except RemoteRequestError as exc:
        raise invalid(f"the {exc.role} server refused the request: {exc}") from None
    except BatcherFull as exc:
        raise state.admission.refusal(f"the reward model's queue is full ({exc})") from None
    except BackendError as exc:
        # What failed (URLs, what a remote server said) is for the operator: the client learns which backend
        # failed, and the request id that finds the details in the log.
        request_id = current_request_id.get()
        log.error("request %s: the %s backend failed: %s", request_id, exc.role, exc)
        where = f" (request id {request_id})" if request_id else ""
        if isinstance(exc, UpstreamBusy):
            raise APIError(503, f"the {exc.role} server is busy; retry later{where}", code="upstream_busy",
                           headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from None
        raise APIError(502, f"the {exc.role} backend failed{where}", code="upstream_error") from None


async def guard(state: ServerState, o: Outcome) -> Outcome:
    """The guard's reward of the first chosen answer, scored inline after selection; a guard failure is logged
    and the answer still goes out."""
    assert state.guard is not None
    started = time.perf_counter()
    answer = o.generation.candidates[o.chosen[0]].text
    try:
        (score,) = await state.score_guard([(o.plan.messages, answer)])
        require_finite(score)
    except Exception:
        log.exception("the guard failed to score an answer; it goes out unguarded")
        return o
    state.metrics.guard_duration.observe(time.perf_counter() - started)
    return replace(o, guard_reward=score.value)


async def handle(state: ServerState, request: Request, endpoint: Endpoint) -> Response:
    arrived = time.perf_counter()
    settings = state.settings
    authorize(request, settings.api_keys)
    require_ready(state)
    req = await parse_body(request, p.ChatCompletionRequest if endpoint == "chat" else p.CompletionRequest, settings)
    # This request's models, whatever is swapped in meanwhile; leased before the next await, so a swap closes
    # them only after this request is done with them.
    served = require_ready(state)
    request.state.access["policy"] = req.model
    entry = lookup(served, req.model)
    watcher = DisconnectWatcher(request, request_timeout(request, settings), since=arrived)
    with state.leases.hold(entry.backend, served.reward), backend_errors(state, PROMPT_PARAM[endpoint], watcher):
        plan = plan_request(req, endpoint, entry, settings)
        request.state.access["best_of"] = plan.best_of
        check_prompt_chars(entry, plan, settings)
        async with watcher, state.admission.slot(watcher.until_gone, cost=plan.cost) as queue_seconds:
            # Tokenizing inside a slot and off the event loop: at most max_in_flight prompts at once, and
            # /health and every other request keep being answered meanwhile.
            await asyncio.to_thread(check_prompt_length, entry, plan, settings)
            outcome = await best_of_n(served, entry, plan, watcher, arrived, queue_seconds)
            if state.guard is not None:  # in the slot too: admission bounds the guard's work like the rest
                outcome = await guard(state, outcome)
    _record(state, outcome, arrived)
    if plan.stream:
        return StreamingResponse(stream_events(outcome), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return respond_json(outcome)

