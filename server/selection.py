"""Selection strategies: which of the N scored candidates a request returns, best first.

- `argmax`: the top n by reward (classic Best-of-N).
- `weighted_vote`: candidates are grouped by their normalised text, a group scores the sum of its members'
  rewards, and the best member of each of the top groups is returned (reward-weighted majority vote). Rewards
  are summed as they are, so with negative rewards a larger group can score lower.
- `soft`: n candidates drawn without replacement with probability proportional to exp(r / tau) (soft
  Best-of-N: tau -> 0 is argmax, tau -> inf is plain sampling).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Literal

Strategy = Literal["argmax", "weighted_vote", "soft"]
STRATEGIES: tuple[Strategy, ...] = ("argmax", "weighted_vote", "soft")


def normalise(text: str) -> str:
    """Case, surrounding punctuation and runs of whitespace do not make answers distinct."""
    return re.sub(r"\s+", " ", text.lower()).strip(" \t\n.!?,;:")


def argmax(rewards: Sequence[float], n: int) -> list[int]:
    return sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))[:n]


def weighted_vote(texts: Sequence[str], rewards: Sequence[float], n: int) -> list[int]:
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(normalise(text), []).append(i)
    ranked = sorted(groups.values(), key=lambda members: (-sum(rewards[i] for i in members), members[0]))
    chosen = [max(members, key=lambda i: (rewards[i], -i)) for members in ranked]
    # Fewer distinct answers than n: fill up with the best remaining candidates.
    rest = [i for i in argmax(rewards, len(rewards)) if i not in chosen]
    return (chosen + rest)[:n]


def soft(rewards: Sequence[float], n: int, temperature: float, rng: random.Random) -> list[int]:
    remaining = list(range(len(rewards)))
    chosen: list[int] = []
    for _ in range(min(n, len(rewards))):
        top = max(rewards[i] for i in remaining)
        weights = [math.exp((rewards[i] - top) / temperature) for i in remaining]  # shifted for stability
        pick = rng.choices(remaining, weights=weights)[0]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def select(strategy: Strategy, texts: Sequence[str], rewards: Sequence[float], n: int, *,
           temperature: float = 1.0, rng: random.Random | None = None) -> list[int]:
    """Indices of the n returned candidates, in the order they are returned."""
    if len(texts) != len(rewards):
        raise ValueError("one reward per candidate")
    if not 1 <= n <= len(rewards):
        raise ValueError(f"n must be between 1 and the number of candidates ({len(rewards)})")
    if strategy == "argmax":
        return argmax(rewards, n)
    if strategy == "weighted_vote":
        return weighted_vote(texts, rewards, n)
    if strategy == "soft":
        if temperature <= 0:
            raise ValueError("the soft strategy needs a positive temperature")
        return soft(rewards, n, temperature, rng or random.Random())
    raise ValueError(f"unknown selection strategy {strategy!r}")
