"""The parts of models/upstream.py that need no server: replica balancing, busy replicas and Retry-After. Calls
through real misbehaving servers are in tests/server/test_remote.py."""

import email.utils
import time

import pytest

from models.upstream import DEFAULT_RETRY_AFTER_S, Balancer, retry_after_s


def test_balancer_round_robin_and_least_outstanding():
    urls = ["http://a/v1", "http://b/v1", "http://c/v1"]
    rr = Balancer(urls)
    assert [rr.pick() for _ in range(4)] == ["http://a/v1", "http://b/v1", "http://c/v1", "http://a/v1"]
    assert all(rr.pick(avoid={"http://b/v1"}) != "http://b/v1" for _ in range(3))
    assert rr.pick(avoid=set(urls)) in urls  # every replica failed this call: any may be tried again
    lo = Balancer(urls, "least_outstanding")
    with lo.track("http://a/v1"), lo.track("http://b/v1"):
        assert lo.pick() == "http://c/v1"
        with lo.track("http://c/v1"), lo.track("http://c/v1"):
            assert lo.pick() in ("http://a/v1", "http://b/v1")
    assert lo.outstanding == dict.fromkeys(urls, 0)


def test_a_busy_replica_is_not_picked_until_its_time_is_up():
    balancer = Balancer(["http://a/v1", "http://b/v1"])
    balancer.throttle("http://a/v1", 60)
    assert {balancer.pick() for _ in range(4)} == {"http://b/v1"} and balancer.free_in() == 0
    balancer.throttle("http://b/v1", 30)
    assert balancer.pick() is None and 29 < balancer.free_in() <= 30
    balancer.throttle("http://b/v1", 0.05)  # a shorter wait never shortens the one already promised
    assert 29 < balancer.free_in() <= 30


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 12 ", 12.0), (None, DEFAULT_RETRY_AFTER_S),
                                                 ("soon", DEFAULT_RETRY_AFTER_S), ("-3", DEFAULT_RETRY_AFTER_S)])
def test_retry_after_in_seconds(header, seconds):
    assert retry_after_s(header) == seconds


def test_retry_after_as_an_http_date():
    assert 19 < retry_after_s(email.utils.formatdate(time.time() + 20, usegmt=True)) <= 20
    assert retry_after_s(email.utils.formatdate(time.time() - 20, usegmt=True)) == 0
