"""Selection strategies: which of the N scored candidates a request returns, best first.

- `argmax`: the top n by reward (classic Best-of-N).
- `weighted_vote`: candidates are grouped by their normalised text, a group scores the sum of its members'
  softmax weights exp(r / tau) / Σ exp(r / tau), and the best member of each of the top groups is returned
  (reward-weighted majority vote). A Bradley-Terry reward has no origin, and adding a constant to every reward
  leaves the weights unchanged; raw rewards summed would not be (three answers at −1 would lose to one at −1.5).
  tau is the request's `selection_temperature`, shared with `soft`. At tau = 1, its default, a candidate's
  weight is the probability that the reward model prefers it to all the others (Plackett-Luce, the
  Bradley-Terry model of the RM's training extended to n candidates), and a group's weight the probability
  that the preferred answer is that one. tau -> inf is a plain majority vote, tau -> 0 is argmax.
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


def weighted_vote(texts: Sequence[str], rewards: Sequence[float], n: int, temperature: float) -> list[int]:
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(normalise(text), []).append(i)
    top = max(rewards)
    # Softmax numerators; the common denominator does not change the order. Shifted by the top reward, so a
    # constant added to every reward cancels (and nothing overflows). fsum: the order of members does not matter.
    weights = [math.exp((r - top) / temperature) for r in rewards]
    ranked = sorted(groups.values(), key=lambda members: (-math.fsum(weights[i] for i in members),
                                                          -max(rewards[i] for i in members), members[0]))
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
    if strategy in ("weighted_vote", "soft") and temperature <= 0:
        raise ValueError(f"the {strategy} strategy needs a positive temperature")
    if strategy == "weighted_vote":
        return weighted_vote(texts, rewards, n, temperature)
    if strategy == "soft":
        return soft(rewards, n, temperature, rng or random.Random())
    raise ValueError(f"unknown selection strategy {strategy!r}")
