"""The FastAPI app: routes, error handlers, and a lifespan that loads the models off the request path.

The server accepts connections at once: `/health` answers while the models load, `/ready` and the model
endpoints answer 503 until one real small generation and scoring per policy has succeeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from models.interface import activate
from server import pipeline
from server import protocol as p
from server.access import AccessLog, banner_log, ready_banner
from server.admin import install_admin
from server.errors import APIError, install_error_handlers
from server.http import authorize, holds_admin_key, parse_body
from server.openapi import documented, install_openapi
from server.settings import Settings
from server.state import ServerState

PLAYGROUND = resources.files("server").joinpath("static/playground.html").read_text(encoding="utf-8")
"""The playground page at `/`: one self-contained file calling this server's API (package data)."""
PLAYGROUND_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The browser itself holds the page to this server: nothing from elsewhere loads or is called."""


def _state(request: Request) -> ServerState:
    return request.app.state.bon


def create_app(settings: Settings) -> FastAPI:
    state = ServerState(settings)

    async def start_and_announce() -> None:
        await state.start()
        if state.served is not None:
            banner_log.info("%s", ready_banner(settings, state.served,
                                               state.guard.version if state.guard is not None else None))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(start_and_announce(), name="load-models")
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await state.stop()

    app = FastAPI(title="bon", summary="Best-of-N serving with reward-model reranking", lifespan=lifespan)
    app.state.bon = state
    app.add_middleware(AccessLog, metrics=state.metrics, enabled=settings.access_log)
    install_error_handlers(app)
    install_admin(app, state)
    install_openapi(app)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND, headers={"Content-Security-Policy": PLAYGROUND_CSP})

    @app.get("/health", **documented())
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", **documented(503))
    async def ready(request: Request) -> dict[str, object]:
        """200 once serving; else 503 with a stable reason, and the failure behind it for the admin key only."""
        state = _state(request)
        served = pipeline.require_ready(state, detail=holds_admin_key(request, state.settings.admin_key))
        return {"status": "ready", "policies": {name: e.version for name, e in served.policies.items()},
                "reward_model": served.reward.version}

    @app.get("/metrics", response_class=PlainTextResponse, **documented())
    async def metrics(request: Request) -> Response:
        state = _state(request)
        if state.served is not None:
            state.metrics.publish_running({(name, e.version): e.backend.requests_running()
                                           for name, e in state.served.policies.items()})
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=p.ModelList, **documented(401, 503))
    async def models(request: Request) -> p.ModelList:
        state = _state(request)
        authorize(request, state.settings.api_keys)
        served = pipeline.require_ready(state)
        now = int(time.time())
        cards = [p.ModelCard(id=name, created=now, bon={"version": e.version, "backend": e.backend_kind,
                                                         "default_best_of": e.default_best_of})
                 for name, e in served.policies.items()]
        return p.ModelList(data=cards)

    # The completion routes answer a JSONResponse or a stream themselves: `response_model` only documents the JSON.
    @app.post("/v1/chat/completions", response_model=p.ChatCompletionResponse,
              **documented(401, 404, 429, 502, 503, body=p.ChatCompletionRequest, stream=p.ChatCompletionChunk))
    async def chat_completions(request: Request) -> Response:
        return await pipeline.handle(_state(request), request, "chat")

    @app.post("/v1/completions", response_model=p.CompletionResponse,
              **documented(401, 404, 429, 502, 503, body=p.CompletionRequest, stream=p.CompletionChunk))
    async def completions(request: Request) -> Response:
        return await pipeline.handle(_state(request), request, "completion")

    @app.post("/classify", response_model=p.ClassifyResponse, **documented(401, 429, 502, 503, body=p.ClassifyRequest))
    async def classify(request: Request) -> p.ClassifyResponse:
        """vLLM 0.32's `/classify` (chat form) over the reward model, scored in the same micro-batches as the
        Best-of-N candidates: the same fields, `usage` included, and the same default activation (the reward
        backend's `activation`). Admitted like a completion (a slot, 429 when full, stopped when the client goes);
        a conversation longer than the RM reads is a 400, never a score of a truncated text."""
        arrived = time.perf_counter()
        state = _state(request)
        authorize(request, state.settings.api_keys)
        pipeline.require_ready(state)
        req = await parse_body(request, p.ClassifyRequest, state.settings)
        answer = req.messages[-1]
        if answer.role != "assistant":
            raise APIError(400, "the last message must be the assistant answer to score", param="messages")
        served = pipeline.require_ready(state)  # leased before the next await, like a completion's models
        messages = pipeline.to_messages(req.messages)
        if served.reward.max_length is not None:
            pipeline.refuse_by_characters(messages, served.reward.max_length, "the conversation",
                                          "the reward model's context", "messages")
        watcher = pipeline.DisconnectWatcher(request, pipeline.request_timeout(request, state.settings),
                                             since=arrived)
        with state.leases.hold(served.reward), pipeline.backend_errors(state, "messages", watcher):
            async with watcher, state.admission.slot(watcher.until_gone):
                (score,) = await watcher.until_gone(served.scorer.score([(messages[:-1], answer.text())]))
        activation = "identity" if req.use_activation is False else served.reward.activation
        data = p.ClassifyData(index=0, label=served.reward.label, probs=[activate(activation, score.value)],
                              num_classes=1)
        return p.ClassifyResponse(model=req.model or "reward", data=[data],
                                  usage=p.ClassifyUsage(prompt_tokens=score.tokens, total_tokens=score.tokens))

    return app
