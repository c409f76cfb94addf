"""The request models' field order: OpenAI's fields as its API reference lists them, then the Best-of-N ones."""

import pytest

from server.protocol import ChatCompletionRequest, CompletionRequest

BEST_OF_N = ["best_of", "return_candidates", "selection", "selection_temperature", "ignore_eos"]


@pytest.mark.parametrize(("request_model", "first"), [(ChatCompletionRequest, ["messages", "model"]),
                                                      (CompletionRequest, ["model", "prompt"])])
def test_the_best_of_n_fields_come_after_openais(request_model, first):
    fields = list(request_model.model_json_schema()["properties"])
    assert fields[:2] == first and fields[-len(BEST_OF_N):] == BEST_OF_N
    assert list(request_model.model_fields) == fields
