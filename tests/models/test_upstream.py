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


@pytest.mark.parametrize("policy", ["round_robin", "least_outstanding"])
def test_a_failed_replica_is_set_aside_longer_at_each_failure_and_back_once_it_answers(policy):
    a, b = "http://a/v1", "http://b/v1"
    balancer = Balancer([a, b], policy, eject_s=0.2)
    balancer.failed(a)  # a dead replica answers at once, so least_outstanding would otherwise pick it every time
    assert {balancer.pick() for _ in range(6)} == {b}
    assert balancer.pick(avoid={b}) == a  # when every other replica failed this call, it is tried again
    time.sleep(0.25)
    assert a in {balancer.pick() for _ in range(2)}  # its time is up: back in the rotation
    for seconds in (0.4, 0.8, 1.6, 1.6):  # failures in a row: twice as long each time, up to 8 × 0.2 s
        balancer.failed(a)
        assert seconds - 0.05 < balancer.ejected_until[a] - time.monotonic() <= seconds
    balancer.failed(b)  # both set aside: both are still asked, rather than none
    assert {balancer.pick() for _ in range(4)} <= {a, b} and balancer.pick() is not None
    balancer.answered(a)
    assert {balancer.pick() for _ in range(4)} == {a} and balancer.failures_in_a_row[a] == 0


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 12 ", 12.0), (None, DEFAULT_RETRY_AFTER_S),
                                                 ("soon", DEFAULT_RETRY_AFTER_S), ("-3", DEFAULT_RETRY_AFTER_S)])
def test_retry_after_in_seconds(header, seconds):
    assert retry_after_s(header) == seconds


def test_retry_after_as_an_http_date():
    assert 19 < retry_after_s(email.utils.formatdate(time.time() + 20, usegmt=True)) <= 20
    assert retry_after_s(email.utils.formatdate(time.time() - 20, usegmt=True)) == 0
