"""One timed Best-of-N request, and the figures over repeats: p50 with its spread, and ratios paired by repeat.

Repeat i of every target answers the same prompt, so a ratio between two targets is taken repeat by repeat
(a_i / c_i) and summarised like a time: its p50, min..max and quartiles. Percentiles interpolate linearly
between order statistics (`loadtest.stats.percentiles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.stats import percentiles


@dataclass(frozen=True)
class Timing:
    """One Best-of-N request as the benchmark saw it; seconds."""

    latency_s: float
    """End to end, as its caller waited for it."""
    sample_s: float
    """Sampling the N candidates (for target e: the whole n=N request to vLLM)."""
    score_s: float
    """Scoring them with the reward model (for bon: the micro-batcher's wait included)."""
    tokens: int
    """Tokens generated over all N candidates."""
    total_s: float | None = None
    """bon's own `timings.total_seconds` (arrival to the chosen answer), where bon reports it."""


def series(values: Sequence[float]) -> dict[str, Any]:
    """The values with their p50, min, max and quartiles."""
    q = percentiles(values, (25, 50, 75))
    return {"p50": q["p50"], "min": min(values), "max": max(values), "q1": q["p25"], "q3": q["p75"],
            "values": list(values)}


def point(timings: Sequence[Timing]) -> dict[str, Any]:
    """A (target, N) point: latency and its parts over the repeats, and the tokens each request generated."""
    out = {key: series([getattr(t, key) for t in timings]) for key in ("latency_s", "sample_s", "score_s")}
    totals = [t.total_s for t in timings if t.total_s is not None]
    if len(totals) == len(timings):
        out["total_s"] = series(totals)
    out["tokens"] = [t.tokens for t in timings]
    return out


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Repeat i's numerator over repeat i's denominator, summarised as a `series`."""
    return series([a / b for a, b in zip(numerators, denominators, strict=True)])
