"""Who may call, and what they send: the bearer-key check and the bounded body parsing of every route that takes
a key or a body (both completion endpoints, `/classify` and the admin API).

A key is compared in constant time, as bytes: the header's own bytes (Starlette decodes headers as Latin-1, so
encoding back gives them unchanged, whatever the client sent) against the key's UTF-8. A body is refused with
413 as soon as it is known to exceed the limit, before any of it is parsed; a chunked body is counted as it is
read. A body that has not all arrived `body_read_timeout_s` after the route starts reading it is refused with 408:
uvicorn sets no such deadline, so a client sending its body a byte at a time would hold the connection forever.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from server import protocol
from server.errors import APIError, from_validation_error, invalid
from server.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def _holds_a_key(request: Request, keys: Sequence[str]) -> bool:
    """Whether `Authorization: Bearer <token>` carries one of `keys` (each one compared, in constant time)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode("latin-1")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return scheme.lower() == "bearer" and matched


def authorize(request: Request, keys: Sequence[str]) -> None:
    """The API key check of the model endpoints: a 401 unless the request carries one of `keys` (none: open)."""
    if keys and not _holds_a_key(request, keys):
        raise APIError(401, "invalid or missing API key (Authorization: Bearer <key>)", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def holds_admin_key(request: Request, key: str | None) -> bool:
    """Whether the request carries the admin key (never, on a server without one)."""
    return key is not None and _holds_a_key(request, (key,))


def authorize_admin(request: Request, key: str) -> None:
    """The admin API's check: a 401 unless the request carries the admin key (never an API key)."""
    if not holds_admin_key(request, key):
        raise APIError(401, "invalid or missing admin key (Authorization: Bearer <admin key>)",
                       code="invalid_admin_key", headers={"WWW-Authenticate": "Bearer"})


async def _read(request: Request, limit: int) -> bytes:
    too_large = APIError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, model: type[M], settings: Settings) -> M:
    """The JSON body as `model`: 413 past `max_body_bytes`, 408 when it takes longer than `body_read_timeout_s`
    to arrive, 400 when it does not validate.

    OpenAI fields this server cannot honour are refused when set; other unknown fields (where `model` allows
    them) are logged and ignored.
    """
    try:
        async with asyncio.timeout(settings.body_read_timeout_s):
            body = await _read(request, settings.max_body_bytes)
    except TimeoutError:
        # Closed after the answer: kept alive, the connection would go on reading the rest of that body.
        raise APIError(408, f"the request body did not arrive within {settings.body_read_timeout_s:g} s",
                       code="body_read_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:  # gone before its body was read: nothing to answer, and no server error to log
        raise APIError(499, "the client closed the request", code="client_closed") from None
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(list(exc.errors())) from None
    extras = parsed.model_extra or {}
    for field in protocol.UNSUPPORTED_FIELDS:
        if extras.get(field) not in (None, False, 0, "none", [], {}):
            raise invalid(f"{field} is not supported by this server", param=field, code="unsupported_parameter")
    unknown = sorted(k for k in extras if k not in protocol.UNSUPPORTED_FIELDS)
    if unknown:
        log.warning("ignoring unknown request fields: %s", ", ".join(unknown))
    return parsed
