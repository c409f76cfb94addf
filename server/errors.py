"""One error factory and one envelope, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Invalid requests are 400, FastAPI's 422 included; nothing a client sends can produce a 500. Every rejection
is counted in `bon_rejections_total` by its reason (the error's code).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error",
          499: "client_closed_request", 502: "upstream_error", 503: "service_unavailable", 500: "internal_error"}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    """The request field at fault, when one is."""
    code: str | None
    """A stable reason (`invalid_api_key`, `queue_full`, ...), counted in `bon_rejections_total`."""


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: the body of every answer that is not a 2xx, as `/openapi.json` describes it."""

    error: ErrorBody


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation_error(errors: list[Any]) -> APIError:
    """The first pydantic/FastAPI validation error as a 400, naming the offending field."""
    if not errors:
        return invalid("invalid request")
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body",)]
    if first.get("type") == "json_invalid":
        return invalid(f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}",
                       code="invalid_json")
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return invalid(message, param=param)


def _count(request: Request, error: APIError) -> None:
    state = getattr(request.app.state, "bon", None)
    rejected = error.status == 503 or (400 <= error.status < 500 and error.status != 499)
    if state is not None and rejected:
        state.metrics.rejections.labels(reason=error.code or error.type).inc()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    _count(request, exc)
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return await _api_error(request, from_validation_error(list(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
    return await _api_error(request, error)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, "internal server error", code="internal_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
