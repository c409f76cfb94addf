"""Percentiles against known distributions, and the summary of hand-made records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.client import RequestRecord
from loadtest.stats import percentiles, summarize


def test_percentiles_of_1_to_1000_ms_by_linear_interpolation():
    p = percentiles([ms / 1000 for ms in range(1, 1001)])
    assert p["p50"] == pytest.approx(0.5005)
    assert p["p90"] == pytest.approx(0.9001)
    assert p["p95"] == pytest.approx(0.95005)
    assert p["p99"] == pytest.approx(0.99001)


def test_percentiles_of_a_sampled_exponential_match_its_quantiles():
    scale = 0.2  # mean latency 200 ms
    sample = np.random.default_rng(0).exponential(scale, 200_000)
    p = percentiles(sample)
    for q in (50, 90, 95, 99):
        assert p[f"p{q}"] == pytest.approx(-scale * math.log(1 - q / 100), rel=0.03)


def test_percentiles_of_nothing_and_of_one_value():
    assert percentiles([]) == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert set(percentiles([0.3]).values()) == {0.3}


def _ok(i: int, latency: float, **more: object) -> RequestRecord:
    return RequestRecord(request_id=i, best_of=4, latency=latency, status="200", completion_tokens=10,
                         generated_tokens=40, reward=0.5, **more)


def test_summary_counts_goodput_and_cost():
    records = [_ok(0, 0.5, ttft=0.1, itls=[0.01, 0.03], device_seconds=0.2, device_source="timings"),
               _ok(1, 1.5, ttft=0.2, itls=[0.02], device_seconds=0.4, device_source="timings"),
               RequestRecord(request_id=2, best_of=4, latency=0.01, status="429"),
               RequestRecord(request_id=3, best_of=4, status="timeout")]
    s = summarize(records, wall=2.0, slo=1.0)
    assert (s["sent"], s["answered"], s["errors"]) == (4, 2, 2)
    assert s["sent"] == s["answered"] + s["errors"]
    assert s["errors_by_status"] == {"429": 1, "timeout": 1}
    assert s["error_rate"] == 0.5
    assert s["throughput_rps"] == 1.0
    assert s["goodput_rps"] == 0.5  # only the 0.5 s answer meets the 1 s target
    assert s["generated_tokens_per_s"] == 40.0
    assert s["generated_tokens_per_answer"] == 40.0
    assert s["generated_per_returned_token"] == 4.0
    assert s["device_seconds_per_answer"] == pytest.approx(0.3)
    assert s["device_seconds_source"] == "timings"
    assert s["latency_s_p50"] == 1.0  # errors are not in the latency distribution
    assert s["ttft_s_max"] == 0.2
    assert s["itl_s_p50"] == 0.02  # gaps pooled over requests
    assert s["reward_mean"] == 0.5


def test_summary_says_when_device_seconds_are_an_upper_bound():
    records = [_ok(0, 0.5, device_seconds=0.5, device_source="latency"),
               _ok(1, 0.6, device_seconds=0.1, device_source="timings")]
    assert summarize(records[:1], 1.0, 1.0)["device_seconds_source"] == "latency"
    assert summarize(records, 1.0, 1.0)["device_seconds_source"] == "mixed"
    empty = summarize([], 1.0, 1.0)
    assert (empty["sent"], empty["error_rate"], empty["device_seconds_source"]) == (0, 0.0, None)
