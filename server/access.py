"""What the server tells its operator: the banner when it is ready, and one access-log line per request.

The access log replaces uvicorn's: it also knows the policy and best_of a completion asked for (the handler
writes them into the request's state) and tags each request with an id, the client's `X-Request-Id` when it
sends a usable one, echoed in the response as `X-Request-Id`. Lines go to the `bon.access` logger at INFO;
`--no-access-log` turns them off (the ids stay, and so does the count of every response in
`bon_http_responses_total`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from server.metrics import Metrics
from server.settings import Settings
from server.state import Served

log = logging.getLogger("bon.access")
banner_log = logging.getLogger("bon")

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
"""The id of the request being handled (None outside one), for messages that point the client to the log."""

Scope = dict[str, Any]
Message = dict[str, Any]


class AccessLog:
    """ASGI middleware: tags every request with an id; counts every response by route and status, and logs one
line per request once its response is sent (streams included) when enabled."""

    def __init__(self, app: Any, metrics: Metrics, enabled: bool = True):
        self.app, self.metrics, self.enabled = app, metrics, enabled

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", ()))
        client_id = sent.get("x-request-id", "")
        request_id = client_id if _CLIENT_ID.match(client_id) else uuid.uuid4().hex[:16]
        token = current_request_id.set(request_id)
        access: dict[str, Any] = {}
        scope.setdefault("state", {})["access"] = access
        status = 500  # what the client sees if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
            # The router leaves the matched route in the scope; a path that matched none is counted as "other".
            handler = getattr(scope.get("route"), "path", "other")
            self.metrics.responses.labels(handler=handler, status=str(status)).inc()
            if self.enabled:
                log.info("%s %s %s %d policy=%s best_of=%s %.1fms", request_id, scope["method"], scope["path"], status,
                         access.get("policy", "-"), access.get("best_of", "-"),
                         (time.perf_counter() - started) * 1e3)


def ready_banner(settings: Settings, served: Served, guard_version: str | None) -> str:
    """Where the server listens and what it serves, for the operator, once it is ready."""
    base = f"http://{settings.host}:{settings.port}"
    lines = [f"bon is ready on {base} (playground: {base}/, API: {base}/v1, docs: {base}/docs)"]
    for name, entry in served.policies.items():
        lines.append(f"  policy {name}: {entry.version} ({entry.backend_kind} backend, default best_of "
                     f"{entry.default_best_of})")
    lines.append(f"  reward model: {served.reward.version}")
    lines.append(f"  guard: {guard_version or 'off'}")
    keys = "API keys required" if settings.api_keys else "no API key (open to anyone who can reach it)"
    lines.append(f"  {keys}; admin API {'on' if settings.admin_key else 'off'}; "
                 f"access log {'on' if settings.access_log else 'off'}")
    return "\n".join(lines)
