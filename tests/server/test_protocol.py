"""The request models: OpenAI's fields in its API reference's order, then the Best-of-N ones; the limits they check."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from models.interface import SAMPLING_EPS
from server.errors import from_validation_error
from server.protocol import (
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
)
from tests.builders import JSON_VALUES, near_valid_bodies

BEST_OF_N = ["best_of", "return_candidates", "selection", "selection_temperature", "early_rejection", "ignore_eos"]


@pytest.mark.parametrize(("request_model", "first"), [(ChatCompletionRequest, ["messages", "model"]),
                                                      (CompletionRequest, ["model", "prompt"])])
def test_the_best_of_n_fields_come_after_openais(request_model, first):
    fields = list(request_model.model_json_schema()["properties"])
    assert fields[:2] == first and fields[-len(BEST_OF_N):] == BEST_OF_N
    assert list(request_model.model_fields) == fields


@pytest.mark.parametrize("request_model", [ChatCompletionRequest, CompletionRequest])
def test_stop_takes_at_most_four_strings_of_at_most_64_characters(request_model):
    body = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    for stop in ("s" * 64, ["s" * 64] * 4, None):
        assert request_model.model_validate({**body, "stop": stop}).stop == stop
    for stop, reason in ((["s"] * 5, "at most 4 stop strings"), ("s" * 65, "at most 64 characters"),
                         (["ok", "s" * 65], "at most 64 characters")):
        with pytest.raises(ValidationError) as refused:
            request_model.model_validate({**body, "stop": stop})
        error = from_validation_error(refused.value.errors())
        assert (error.status, error.param) == (400, "stop") and reason in error.message


def test_a_tiny_temperature_is_greedy_and_a_tiny_top_p_keeps_the_top_token():
    """Both are the limits such values tend to, and the samplers' float32 cannot take them as they are."""
    body = {"model": "sft", "messages": [{"role": "user", "content": "hi"}]}
    for request_model in (ChatCompletionRequest, CompletionRequest):
        tiny = request_model.model_validate({**body, "prompt": "hi", "temperature": 1e-40, "top_p": 1e-300})
        assert (tiny.temperature, tiny.top_p) == (0.0, SAMPLING_EPS)
        usual = request_model.model_validate({**body, "prompt": "hi", "temperature": 0.01, "top_p": 0.5})
        assert (usual.temperature, usual.top_p) == (0.01, 0.5)


@settings(max_examples=150, deadline=None)
@given(body=JSON_VALUES | near_valid_bodies(), request_model=st.sampled_from([ChatCompletionRequest, CompletionRequest,
                                                                             ClassifyRequest]))
def test_any_json_validates_within_every_limit_or_is_a_400_naming_a_field(body: object,
                                                                          request_model: type[BaseModel]):
    try:
        request = request_model.model_validate_json(json.dumps(body))
    except ValidationError as refused:
        error = from_validation_error(refused.errors())
        assert error.status == 400 and error.message
        names = set(request_model.model_fields) | (set(body) if isinstance(body, dict) else set())
        assert error.param is None or error.param.split(".")[0] in names, error.param
        return
    # What validated validates again, unchanged (JSON compared: NaN, allowed in ignored fields, is not NaN).
    assert request_model.model_validate_json(request.model_dump_json()).model_dump_json() == request.model_dump_json()
    if isinstance(request, ClassifyRequest):
        assert len(request.messages) >= 2
        return
    assert isinstance(request, CompletionRequest) or len(request.messages) >= 1
    for count in (request.n, request.best_of, request.max_tokens, request.max_completion_tokens):
        assert count is None or count >= 1
    assert request.temperature is None or request.temperature == 0 or SAMPLING_EPS <= request.temperature <= 2
    assert request.top_p is None or SAMPLING_EPS <= request.top_p <= 1
    assert request.selection_temperature > 0
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    assert len(stops) <= MAX_STOP_STRINGS and all(len(s) <= MAX_STOP_CHARS for s in stops)
