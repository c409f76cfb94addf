"""The request models: OpenAI's fields in its API reference's order, then the Best-of-N ones; the limits they check."""

import pytest
from pydantic import ValidationError

from server.errors import from_validation_error
from server.protocol import ChatCompletionRequest, CompletionRequest

BEST_OF_N = ["best_of", "return_candidates", "selection", "selection_temperature", "ignore_eos"]


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
