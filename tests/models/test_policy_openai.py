"""The OpenAI-compatible policy backend's own parts (models/policy_openai.py): base URLs. Replica balancing is in
tests/models/test_upstream.py; through real servers, with a dead replica and misbehaving ones, in
tests/server/test_remote.py."""

import pytest

from models.policy_openai import normalise_base_url


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"])
def test_base_urls_are_normalised(url):
    assert normalise_base_url(url) == "http://h:8000/v1"
