"""Who may call and what they send (server/http.py): the key on every route but the public ones, bodies parsed
into a model or refused in the envelope whatever the bytes, and a body that does not arrive in time."""

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import BaseRoute

from server import admin_protocol, protocol
from server.app import create_app
from server.errors import APIError, ErrorResponse
from server.http import parse_body
from server.settings import Settings
from tests.builders import API_KEY, BODY_READ_TIMEOUT_S, CHAT_BODY, GUARDED_ADMIN_KEY, JSON_VALUES, near_valid_bodies

PUBLIC = {
    "/": "the playground: a static page; the calls it makes carry the key its user types",
    "/health": "liveness: probed by orchestrators, which hold no key; says only that the process runs",
    "/ready": "readiness: probed likewise; the failure behind a 503 is shown only with the admin key",
    "/metrics": "scraped by Prometheus, which holds no key; counts and versions, never a request's content",
    "/openapi.json": "the API's description, the same for everyone",
    "/docs": "the same description, as a page",
    "/docs/oauth2-redirect": "a static helper of that page",
    "/redoc": "the same description, as another page",
}
"""The routes anyone may call, and why."""


def every_route(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, those of included routers too (newer FastAPI keeps an included router whole in `app.routes`)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from every_route(included.routes) if included is not None else (route,)


def envelope(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.json()["error"]["code"] == code, response.text
    ErrorResponse.model_validate_json(response.content, strict=True)


def test_every_route_but_the_public_ones_refuses_a_request_without_its_key(guarded):
    """The routes come from the app itself, so a route added without the key check fails here."""
    app = create_app(Settings(api_keys=[API_KEY], admin_key=GUARDED_ADMIN_KEY))
    routes = [(route.path, method) for route in every_route(app.routes) for method in sorted(route.methods - {"HEAD"})]
    assert {path for path, _ in routes} >= PUBLIC.keys()
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        # The server runs the routes enumerated here.
        assert app.openapi()["paths"].keys() == client.get("/openapi.json").json()["paths"].keys()
        for path, method in routes:
            url = re.sub(r"\{\w+\}", "unknown", path)
            if path in PUBLIC:
                assert client.request(method, url).status_code == 200, path
                continue
            code, key, other = ("invalid_admin_key", GUARDED_ADMIN_KEY, API_KEY) if path.startswith("/admin/") else (
                "invalid_api_key", API_KEY, GUARDED_ADMIN_KEY)
            refused = client.request(method, url)
            envelope(refused, 401, code)
            assert refused.headers["www-authenticate"] == "Bearer"
            envelope(client.request(method, url, headers={"Authorization": f"Bearer {other}"}), 401, code)
            # With its key the same request gets past the check (400 for the missing body, 404 for `unknown`...).
            assert client.request(method, url, headers={"Authorization": f"Bearer {key}"}).status_code != 401, path


def slow_body(url: str, trickle_s: float) -> tuple[bytes, float]:
    """POST a chat completion whose body stops after 10 bytes (sending one more byte every 0.1 s for `trickle_s`
    seconds); what comes back until the server closes the connection, and when it came."""
    address = urlsplit(url)
    body = json.dumps(CHAT_BODY).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    answer, sent = b"", 10
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(head + body[:sent])
        started = time.monotonic()
        sock.settimeout(0.1)
        while True:
            assert time.monotonic() - started < BODY_READ_TIMEOUT_S + 10, "the connection is still open"
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                # A trickle stops before the deadline: a byte landing as the server closes would reset the
                # connection and could drop its answer.
                if time.monotonic() - started < trickle_s:
                    sock.sendall(body[sent:sent + 1])
                    sent += 1
                continue
            if not chunk:
                return answer, time.monotonic() - started
            answer += chunk


def test_a_body_that_stops_coming_is_408_at_the_deadline_and_its_connection_closed(guarded):
    """uvicorn waits for a body forever; `body_read_timeout_s` answers 408 and frees the connection, at the same
    deadline whether the body stopped or still trickles in."""
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(slow_body, [guarded.url] * 2, [0, BODY_READ_TIMEOUT_S - 0.5]))
    for answer, elapsed in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body)["error"] == {"message": f"the request body did not arrive within "
                                                        f"{BODY_READ_TIMEOUT_S:g} s", "type": "invalid_request_error",
                                             "param": None, "code": "body_read_timeout"}
        # A deadline per chunk would have waited 2 s past the trickle's last byte.
        assert BODY_READ_TIMEOUT_S - 0.1 < elapsed < BODY_READ_TIMEOUT_S + 1.25, elapsed
    response = httpx.post(guarded.url + "/v1/chat/completions", json=CHAT_BODY, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text


# parse_body on any bytes: a model, or a refusal in the envelope; never another exception.

MODELS = [protocol.ChatCompletionRequest, protocol.CompletionRequest, protocol.ClassifyRequest,
          admin_protocol.LoadPolicy, admin_protocol.SetBestOf, admin_protocol.LoadReward]
LIMIT = 512
SETTINGS = Settings(max_body_bytes=LIMIT)


def bodies() -> st.SearchStrategy[bytes]:
    encoded = (JSON_VALUES | near_valid_bodies()).map(lambda value: json.dumps(value).encode())
    return st.binary(max_size=600) | encoded


def asgi_request(messages: list[dict], headers: list[tuple[bytes, bytes]]) -> Request:
    """A starlette request whose `receive` hands out `messages`, one a call, as a server would."""

    async def receive() -> dict:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def http_request(body: bytes, chunk: int, declared: bool) -> Request:
    """A request whose body arrives in pieces of `chunk` bytes, with or without a Content-Length."""
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": piece, "more_body": k < len(pieces) - 1}
                for k, piece in enumerate(pieces)]
    return asgi_request(messages, [(b"content-length", str(len(body)).encode())] if declared else [])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), model=st.sampled_from(MODELS), chunk=st.integers(1, 700), declared=st.booleans())
def test_any_body_is_a_model_or_a_400_or_413_in_the_envelope(body: bytes, model: type[BaseModel], chunk: int,
                                                              declared: bool):
    try:
        parsed = asyncio.run(parse_body(http_request(body, chunk, declared), model, SETTINGS))
    except APIError as error:
        assert error.status == (413 if len(body) > LIMIT else 400), (error.status, error.message)
        ErrorResponse.model_validate_json(error.response().body, strict=True)
        return
    assert len(body) <= LIMIT and isinstance(parsed, model)


def test_a_client_gone_before_its_body_arrived_is_a_499_not_a_server_error():
    messages = [{"type": "http.request", "body": b'{"model": "sft", ', "more_body": True}, {"type": "http.disconnect"}]
    request = asgi_request(messages, [])
    with pytest.raises(APIError) as gone:
        asyncio.run(parse_body(request, protocol.ChatCompletionRequest, SETTINGS))
    assert (gone.value.status, gone.value.code) == (499, "client_closed")
