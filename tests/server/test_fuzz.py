"""The server fuzzed from its own `/openapi.json` with schemathesis: every operation, with requests that fit the
document and requests that break it, against the real server (both keys, small limits, the tiny models).

No answer is a 5xx; every status, content type, header and body is one the document gives for the operation;
a request that breaks the document is refused; every error is in the OpenAI envelope. `make test` sends a short
run; the `slow` form sends at least 1,000. The seed is printed: `BON_FUZZ_SEED=<seed>` sends the same requests.
"""

import math
import os
import random
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.servers import Server
from server.errors import ErrorBody, ErrorResponse
from tests.builders import API_KEY, CHAT_BODY, GUARDED_ADMIN_KEY

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
REFUSALS = [400, 401, 404, 405, 408, 409, 413, 429]
"""What a request that breaks the document may get: a refusal, never a 2xx (nor a 5xx)."""
SERVED = "sft"


def fuzz(server: Server, count: int, capsys: pytest.CaptureFixture[str]) -> Counter[tuple[str, int]]:
    """Send at least `count` generated requests, spread over every operation; the answers by operation and
    status."""
    fuzz_seed = int(os.environ.get("BON_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    with capsys.disabled():
        print(f"\nschemathesis: {count} requests to {server.url}, seed {fuzz_seed} (BON_FUZZ_SEED={fuzz_seed} "
              "sends them again)")
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    # An operation without parameters or a body has one request to send; the others share the rest.
    varied = [op for op in operations if op.body or op.query or op.path_parameters or op.headers]
    share = math.ceil(count / len(varied))
    answers: Counter[tuple[str, int]] = Counter()
    session = requests.Session()  # one connection for all, not one per request

    def served(case: schemathesis.Case, known: bool) -> schemathesis.Case:
        # Half the valid requests name the served policy, so that they get past the lookup to the models.
        if known and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = SERVED
        return case

    def call(case: schemathesis.Case) -> None:
        key = GUARDED_ADMIN_KEY if case.operation.path.startswith("/admin/") else API_KEY
        response = case.call_and_validate(base_url=server.url, session=session, checks=CHECKS, timeout=60,
                                          headers={"Authorization": f"Bearer {key}"})
        if response.status_code >= 300:  # the envelope, and nothing else
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == set(ErrorBody.model_fields), response.text
            ErrorResponse.model_validate(body, strict=True)
        answers[(case.operation.label, response.status_code)] += 1

    with session:
        for operation in operations:
            cases = st.one_of(st.builds(served, operation.as_strategy(GenerationMode.POSITIVE), st.booleans()),
                              operation.as_strategy(GenerationMode.NEGATIVE))
            examples = share if operation in varied else 1
            run = settings(max_examples=examples, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck))
            seed(fuzz_seed)(run(given(cases)(call)))()
    assert {label for label, _ in answers} == {operation.label for operation in operations}
    return answers


def test_fuzzing_the_openapi_document_finds_no_5xx_and_only_enveloped_errors(guarded, capsys):
    answers = fuzz(guarded, 150, capsys)
    assert sum(answers.values()) >= 150, answers


@pytest.mark.slow
def test_a_thousand_fuzzed_requests_find_no_5xx_and_only_enveloped_errors(guarded, capsys):
    answers = fuzz(guarded, 1000, capsys)
    assert sum(answers.values()) >= 1000, answers
    with capsys.disabled():
        print("answers:", dict(sorted(answers.items())))


FOUND = [("/v1/chat/completions", {**CHAT_BODY, "temperature": 1e-40}, 200, None),
         ("/v1/chat/completions", {**CHAT_BODY, "top_p": 1e-300}, 200, None),
         ("/admin/reward", {"checkpoint": "rm\x00"}, 400, "invalid_checkpoint"),
         ("/admin/policies/sft", {"checkpoint": "a" * 300}, 404, "checkpoint_not_found")]
"""Requests that got a 500 before their fix: the samplers divided by a temperature that float32 makes 0 and
dropped every token under a top_p that it makes 0; the registry raised on a NUL and on a name too long for the
file system."""


@pytest.mark.parametrize(("path", "body", "status", "code"), FOUND)
def test_what_the_fuzzer_found_is_answered(guarded, path, body, status, code):
    key = GUARDED_ADMIN_KEY if path.startswith("/admin/") else API_KEY
    response = httpx.post(guarded.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == status, response.text
    assert status == 200 or response.json()["error"]["code"] == code
