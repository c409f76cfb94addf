"""The gold judge as a noisy human annotator: pairwise, pointwise and listwise preference labels.

Why noise: real preference data disagrees with itself, and a reward model trained on noiseless labels of a
programmatic judge would learn a different problem from the one RLHF faces. Pairwise labels follow
Bradley-Terry on the judge's scores, p(a > b) = sigmoid((s_a - s_b) / T); rankings follow Plackett-Luce
with the same temperature, of which Bradley-Terry is the two-item case; pointwise labels are the score plus
Gaussian noise. A temperature of 0 gives the noiseless annotator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from world.judge import score


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    """Gold scores of the two answers: the label was sampled from them, so chosen_score can be the lower."""


def bt_probability(score_a: float, score_b: float, temperature: float) -> float:
    """p(a preferred to b) under Bradley-Terry with noise temperature T; T = 0 prefers the higher score."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    margin = score_a - score_b
    if temperature == 0 or margin == 0:
        return 0.5 if margin == 0 else float(margin > 0)
    z = margin / temperature
    # A numerically stable logistic: exp of a non-positive number only.
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def label_pair(prompt: str, a: str, b: str, rng: random.Random, temperature: float = 0.5) -> Pair:
    """One annotator label on (a, b): the chosen answer is drawn with the Bradley-Terry probability."""
    score_a, score_b = score(prompt, a), score(prompt, b)
    if rng.random() < bt_probability(score_a, score_b, temperature):
        return Pair(prompt, a, b, score_a, score_b)
    return Pair(prompt, b, a, score_b, score_a)


def pointwise(prompt: str, response: str, rng: random.Random, noise: float = 0.3) -> float:
    """An annotator's rating: the gold score plus Gaussian noise of standard deviation `noise`."""
    return score(prompt, response) + (rng.gauss(0.0, noise) if noise > 0 else 0.0)


def listwise(prompt: str, responses: Sequence[str], rng: random.Random, temperature: float = 0.5) -> list[int]:
    """A ranking of `responses` (indices, best first) sampled from Plackett-Luce on the gold scores.

    Each next place goes to a remaining answer with probability proportional to exp(score / T).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    scores = [score(prompt, r) for r in responses]
    if temperature == 0:
        return sorted(range(len(scores)), key=lambda i: -scores[i])
    remaining = list(range(len(scores)))
    ranking: list[int] = []
    while remaining:
        top = max(scores[i] for i in remaining)
        weights = [math.exp((scores[i] - top) / temperature) for i in remaining]
        ranking.append(remaining.pop(_draw(weights, rng)))
    return ranking


def _draw(weights: Sequence[float], rng: random.Random) -> int:
    """An index drawn with probability proportional to its weight."""
    target = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        target -= w
        if target < 0:
            return i
    return len(weights) - 1
