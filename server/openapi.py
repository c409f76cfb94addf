"""What `/openapi.json` says of each route: the request body it reads, and every error status it can answer, each
with the one error envelope (`ErrorResponse`), as vLLM's document does.

FastAPI describes the bodies it parses itself. Ours are read by `parse_body` (a size limit, a read deadline, 400
rather than 422), so a route names its body model with `documented(body=...)`, which puts a reference to it in
the operation (`openapi_extra`), and `install_openapi` adds the model's schema to the document's components.
FastAPI also lists a 422 on every route with a path or query parameter; no route answers one (the error handlers
make it a 400), so it is taken out. And it gives an error the media type of the route's success (`text/plain` for
`/metrics`), where every error is the JSON envelope.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.errors import ErrorResponse

REF = "#/components/schemas/{model}"

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "invalid request: bad JSON, a field of the wrong type or out of range, a limit exceeded"},
    401: {"description": "the bearer key is missing or wrong",
          "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    404: {"description": "no such model, policy or checkpoint"},
    408: {"description": "the body did not arrive within `body_read_timeout_s`, or the request passed its deadline "
                         "(`request_timeout_s`, or the client's own timeout when shorter)"},
    409: {"description": "another admin change is in progress (with Retry-After), or the change is not possible",
          "headers": _RETRY_AFTER},
    413: {"description": "the body is larger than `max_body_bytes`"},
    429: {"description": "every admission slot is busy and the queue is full", "headers": _RETRY_AFTER},
    500: {"description": "a server bug (its traceback is in the server's log)"},
    502: {"description": "a backend failed (a remote server, or a reward that is not a finite number)"},
    503: {"description": "not ready (loading, warming up, or loading failed), or every remote replica is busy",
          "headers": _RETRY_AFTER},
}
BODY_ERRORS = (400, 408, 413)
"""What reading a body with `parse_body` can answer."""

_bodies: dict[str, type[BaseModel]] = {}
"""Every model a route names as its body, by the component name its reference uses."""


def documented(*statuses: int, body: type[BaseModel] | None = None,
               stream: type[BaseModel] | None = None) -> dict[str, Any]:
    """Keyword arguments of a route decorator: `body` (a model the route reads with `parse_body`) as the request
    body; each error status the route answers, 500 and the body's own (`BODY_ERRORS`) included, with the error
    envelope; and, for a route that streams when asked, its server-sent events of `stream` chunks beside the JSON
    of its `response_model`."""
    codes = set(statuses) | {500} | (set(BODY_ERRORS) if body is not None else set())
    responses: dict[int, dict[str, Any]] = {code: {"model": ErrorResponse, **_ERRORS[code]} for code in sorted(codes)}
    if stream is not None:
        # No schema: OpenAPI 3.1 cannot describe the events' JSON inside the text (vLLM's document does the same).
        responses[200] = {"content": {"text/event-stream": {}},
                          "description": f"JSON, or with `stream: true` server-sent events: "
                          f"`data: <{stream.__name__}>` lines, then `data: [DONE]`"}
    kwargs: dict[str, Any] = {"responses": responses}
    if body is not None:
        known = _bodies.setdefault(body.__name__, body)
        if known is not body:
            raise ValueError(f"two request bodies are named {body.__name__}: {known} and {body}")
        content = {"application/json": {"schema": {"$ref": REF.format(model=body.__name__)}}}
        kwargs["openapi_extra"] = {"requestBody": {"required": True, "content": content}}
    return kwargs


def _complete(document: dict[str, Any]) -> None:
    """Add the schemas of the request bodies the operations reference, drop FastAPI's unanswered 422, and make
    every error JSON."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    referenced = {_ref_name(op["requestBody"]) for item in document.get("paths", {}).values()
                  for op in item.values() if "requestBody" in op}
    models = [(_bodies[name], "validation") for name in sorted(referenced & _bodies.keys())]
    _, schemas = models_json_schema(models, ref_template=REF)
    for name, schema in schemas.get("$defs", {}).items():
        if components.setdefault(name, schema) != schema:
            raise ValueError(f"two schemas are named {name}: a request body's and a response's")
    envelope = {"application/json": {"schema": {"$ref": REF.format(model=ErrorResponse.__name__)}}}
    for item in document.get("paths", {}).values():
        for op in item.values():
            responses = op.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                if not status.startswith("2"):
                    response["content"] = envelope
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _ref_name(request_body: dict[str, Any]) -> str:
    return request_body["content"]["application/json"]["schema"].get("$ref", "").rpartition("/")[2]


def install_openapi(app: FastAPI) -> None:
    """Make `app`'s `/openapi.json` the completed document (built once, on its first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            _complete(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
