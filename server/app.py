"""The FastAPI app: routes, error handlers, and a lifespan that loads the models off the request path.

The server accepts connections at once: `/health` answers while the models load, `/ready` and the model
endpoints answer 503 until one real small generation and scoring per policy has succeeded.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from models.interface import Message
from server import pipeline
from server import protocol as p
from server.admin import install_admin
from server.errors import APIError, install_error_handlers
from server.settings import Settings
from server.state import ServerState


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _identity(x: float) -> float:
    return x


def classify_activation(config: object | None) -> Callable[[float], float]:
    """What vLLM 0.32's `/classify` applies to a one-label model's score unless the request says
    `use_activation: false`, for this Hugging Face config (None: the RM's config is not here, as for a remote RM).

    vLLM (`model_executor/layers/pooler/activations.py`, `get_act_fn`) follows transformers' loss for the config's
    `problem_type`: `regression` is the identity (the raw score even with `use_activation: true`; bon's RM trainer
    sets it); any other one-label model gets a sigmoid.
    """
    return _identity if getattr(config, "problem_type", None) == "regression" else _sigmoid


def _classify_item(reward: object, conversation: list[Message], answer: str) -> tuple[object | None, int]:
    """The RM's config and the tokens it reads for this item, where the backend holds them (hf); a remote RM's
    config and tokens are on its server: (None, 0), and vLLM's generic one-label default (a sigmoid) applies."""
    model, encode = getattr(reward, "model", None), getattr(reward, "encode", None)
    config = getattr(model, "config", None)
    # One short tokenization on the event loop, as the pipeline's prompt-length check does for the policy.
    tokens = len(encode([(conversation, answer)])[0]) if callable(encode) else 0
    return config, tokens


def _state(request: Request) -> ServerState:
    return request.app.state.bon


def create_app(settings: Settings) -> FastAPI:
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.start(), name="load-models")
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await state.stop()

    app = FastAPI(title="bon", summary="Best-of-N serving with reward-model reranking", lifespan=lifespan)
    app.state.bon = state
    install_error_handlers(app)
    install_admin(app, state)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> dict[str, object]:
        served = pipeline.require_ready(_state(request))
        return {"status": "ready", "policies": {name: e.version for name, e in served.policies.items()},
                "reward_model": served.reward.version}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state = _state(request)
        if state.served is not None:
            state.metrics.publish_running({(name, e.version): e.backend.requests_running()
                                           for name, e in state.served.policies.items()})
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        state = _state(request)
        pipeline.authorize(state.settings, request)
        served = pipeline.require_ready(state)
        now = int(time.time())
        cards = [p.ModelCard(id=name, created=now, bon={"version": e.version, "backend": e.backend_kind,
                                                         "default_best_of": e.default_best_of})
                 for name, e in served.policies.items()]
        return JSONResponse(p.ModelList(data=cards).model_dump(mode="json"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await pipeline.handle(_state(request), request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await pipeline.handle(_state(request), request, "completion")

    @app.post("/classify")
    async def classify(request: Request) -> JSONResponse:
        """vLLM 0.32's `/classify` (chat form) over the reward model, batched with the Best-of-N scoring: the same
        fields, `usage` included, and the same default activation (`classify_activation`)."""
        state = _state(request)
        pipeline.authorize(state.settings, request)
        pipeline.require_ready(state)
        req = pipeline.parse(p.ClassifyRequest, await pipeline.read_body(request, state.settings.max_body_bytes))
        *conversation, answer = req.messages
        if answer.role != "assistant":
            raise APIError(400, "the last message must be the assistant answer to score", param="messages")
        messages, text = pipeline.to_messages(conversation), answer.text()
        served = pipeline.require_ready(state)  # leased before the next await, like a completion's models
        with state.leases.hold(served.reward):
            config, tokens = _classify_item(served.reward, messages, text)
            activation = _identity if req.use_activation is False else classify_activation(config)
            (score,) = await served.scorer.score([(messages, text)])
        id2label = getattr(config, "id2label", None) or {}
        response = p.ClassifyResponse(model=req.model or "reward", data=[
            p.ClassifyData(index=0, label=id2label.get(0), probs=[activation(score)], num_classes=1)],
            usage=p.ClassifyUsage(prompt_tokens=tokens, total_tokens=tokens))
        return JSONResponse(response.model_dump(mode="json"))

    return app
