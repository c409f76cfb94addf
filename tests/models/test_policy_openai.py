"""The OpenAI-compatible policy backend's own parts (models/policy_openai.py): replica balancing and base URLs.
Through real servers, with a dead replica, in tests/server/test_remote.py."""

import pytest

from models.policy_openai import Balancer, normalise_base_url


def test_balancer_round_robin_and_least_outstanding():
    urls = ["http://a/v1", "http://b/v1", "http://c/v1"]
    rr = Balancer(urls)
    assert [rr.pick() for _ in range(4)] == ["http://a/v1", "http://b/v1", "http://c/v1", "http://a/v1"]
    assert rr.pick(avoid="http://b/v1") != "http://b/v1"
    lo = Balancer(urls, "least_outstanding")
    with lo.track("http://a/v1"), lo.track("http://b/v1"):
        assert lo.pick() == "http://c/v1"
        with lo.track("http://c/v1"), lo.track("http://c/v1"):
            assert lo.pick() in ("http://a/v1", "http://b/v1")
    assert lo.outstanding == dict.fromkeys(urls, 0)


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"])
def test_base_urls_are_normalised(url):
    assert normalise_base_url(url) == "http://h:8000/v1"
