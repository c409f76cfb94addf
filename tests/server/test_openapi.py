"""`/openapi.json` as a generated client reads it: every route's request body, and every status it can answer
with the error envelope, on a real server with both keys (every route there)."""

import httpx
import pytest

from server import admin_protocol, protocol
from server.errors import ErrorResponse
from server.openapi import REF

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
BODIES = {("post", "/v1/chat/completions"): protocol.ChatCompletionRequest,
          ("post", "/v1/completions"): protocol.CompletionRequest,
          ("post", "/classify"): protocol.ClassifyRequest,
          ("post", "/admin/policies/{name}"): admin_protocol.LoadPolicy,
          ("patch", "/admin/policies/{name}"): admin_protocol.SetBestOf,
          ("post", "/admin/reward"): admin_protocol.LoadReward}
"""Every route that reads a body, and the model it reads it as."""
READING = {400, 408, 413}
"""What reading a body can answer: invalid, too slow, too large."""
ERRORS = {("get", "/health"): set(), ("get", "/ready"): {503}, ("get", "/metrics"): set(),
          ("get", "/v1/models"): {401, 503},
          ("post", "/v1/chat/completions"): READING | {401, 404, 429, 502, 503},
          ("post", "/v1/completions"): READING | {401, 404, 429, 502, 503},
          ("post", "/classify"): READING | {401, 429, 502, 503},
          ("get", "/admin/checkpoints"): {400, 401},
          ("get", "/admin/models"): {401, 503},
          ("post", "/admin/policies/{name}"): READING | {401, 404, 409, 503},
          ("patch", "/admin/policies/{name}"): READING | {401, 404, 409, 503},
          ("delete", "/admin/policies/{name}"): {401, 404, 409, 503},
          ("post", "/admin/policies/{name}/rollback"): {400, 401, 404, 409, 503},
          ("post", "/admin/reward"): READING | {401, 404, 409, 503},
          ("post", "/admin/reward/rollback"): {400, 401, 404, 409, 503}}
"""Each operation's error statuses besides 500 (a server bug, which every operation lists)."""


@pytest.fixture(scope="module")
def document(guarded) -> dict:
    return httpx.get(guarded.url + "/openapi.json").json()


def operations(document: dict) -> dict[tuple[str, str], dict]:
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


def test_every_route_that_reads_a_body_names_its_model(document):
    components = document["components"]["schemas"]
    for key, op in operations(document).items():
        model = BODIES.get(key)
        if model is None:
            assert "requestBody" not in op, key
            continue
        assert op["requestBody"] == {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}, key
        schema = model.model_json_schema(ref_template=REF)
        for name, definition in schema.pop("$defs", {}).items():
            assert components[name] == definition, name
        assert components[model.__name__] == schema, key


def test_every_route_lists_each_error_it_answers_with_the_envelope(document):
    assert set(operations(document)) == set(ERRORS)
    for key, op in operations(document).items():
        responses = op["responses"]
        assert {int(status) for status in responses if status != "200"} == ERRORS[key] | {500}, key
        for status, response in responses.items():
            if status != "200":
                assert response["content"] == {"application/json": {"schema": ENVELOPE}}, (key, status)
    schemas = document["components"]["schemas"]
    envelope = ErrorResponse.model_json_schema(ref_template=REF)
    assert schemas["ErrorBody"] == envelope.pop("$defs")["ErrorBody"] and schemas["ErrorResponse"] == envelope
    assert "HTTPValidationError" not in schemas  # FastAPI's 422, which no route answers


def test_the_completion_routes_describe_their_json_and_their_stream(document):
    for path, model in (("/v1/chat/completions", "ChatCompletionResponse"), ("/v1/completions", "CompletionResponse")):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert content == {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                           "text/event-stream": {}}
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
