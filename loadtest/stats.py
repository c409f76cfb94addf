"""Percentiles and the summary of one sweep point.

Percentiles use linear interpolation between order statistics (numpy's default "linear" method, type 7 of
Hyndman & Fan 1996): the q-th percentile of n sorted values x[0..n-1] is read at rank q/100 · (n − 1).
So latencies of 1..1000 ms give p50 = 500.5 ms and p99 = 990.01 ms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from loadtest.client import RequestRecord

PERCENTILES = (50, 90, 95, 99)


def percentiles(values: Iterable[float], qs: Sequence[float] = PERCENTILES) -> dict[str, float | None]:
    """`{"p50": ..., "p90": ...}` by linear interpolation; None for each when there are no values."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": None for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(data, qs, method="linear"), strict=True)}


def _dist(name: str, values: Sequence[float]) -> dict[str, float | None]:
    out = {f"{name}_{k}": v for k, v in percentiles(values).items()}
    out[f"{name}_mean"] = float(np.mean(values)) if len(values) else None
    out[f"{name}_max"] = float(np.max(values)) if len(values) else None
    return out


def summarize(records: Sequence[RequestRecord], wall: float, slo: float) -> dict[str, Any]:
    """Counts, latency/TTFT/ITL distributions, throughput, goodput and cost per answer of one sweep point.

    Throughput and goodput divide by `wall`, the point's duration. Goodput counts answered requests with
    latency ≤ `slo` seconds. Device-seconds per answer is the mean of the records' `device_seconds`; its source
    is "timings" (server-reported sample + score time), "latency" (end to end, an upper bound) or "mixed".
    Choices per answer, the returned choices' finish reasons and the answers that carried our `bon` object show
    whether the server did what the mode asks (vLLM ignores best_of; a server may return fewer than n choices).
    """
    ok = [r for r in records if r.ok]
    latencies = [r.latency for r in ok if r.latency is not None]
    generated = sum(r.generated_tokens or 0 for r in ok)
    returned = sum(r.completion_tokens or 0 for r in ok)
    device = [r.device_seconds for r in ok if r.device_seconds is not None]
    sources = {r.device_source for r in ok}
    rewards = [r.reward for r in ok if r.reward is not None]
    choices = [r.choices for r in ok if r.choices is not None]
    wall = max(wall, 1e-9)
    summary: dict[str, Any] = {
        "sent": len(records),
        "answered": len(ok),
        "errors": len(records) - len(ok),
        "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0,
        "errors_by_status": dict(sorted(Counter(r.status for r in records if not r.ok).items())),
        "wall_s": wall,
        **_dist("latency_s", latencies),
        **_dist("ttft_s", [r.ttft for r in ok if r.ttft is not None]),
        **_dist("itl_s", [gap for r in ok for gap in r.itls]),
        "throughput_rps": len(ok) / wall,
        "generated_tokens_per_s": generated / wall,
        "slo_s": slo,
        "goodput_rps": sum(1 for v in latencies if v <= slo) / wall,
        "generated_tokens_per_answer": generated / len(ok) if ok else None,
        "returned_tokens_per_answer": returned / len(ok) if ok else None,
        "generated_per_returned_token": generated / returned if returned else None,
        "choices_per_answer": float(np.mean(choices)) if choices else None,
        "finish_reasons": dict(sorted(Counter(reason for r in ok for reason in r.finish_reasons).items())),
        "answers_with_extension": sum(r.extension for r in ok),
        "device_seconds_per_answer": float(np.mean(device)) if device else None,
        "device_seconds_source": sources.pop() if len(sources) == 1 else ("mixed" if sources else None),
        "reward_mean": float(np.mean(rewards)) if rewards else None,
    }
    return summary
