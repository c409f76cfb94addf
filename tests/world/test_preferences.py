"""The judge as a noisy annotator: Bradley-Terry pairs, noisy ratings, Plackett-Luce rankings."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from world import Pair, bt_probability, label_pair, listwise, pointwise, score

PROMPT = "Can I put my teddy bear in the washer?"
GOOD = "Use a gentle cold cycle inside a pillowcase, then let your teddy bear air dry. Hope this helps!"  # 1.5
RUDE = "Ugh, what a silly question. Use a gentle cold cycle and let it air dry."  # 0.0
WRONG = "Wash it on the hottest cycle and tumble dry it on high."  # -0.5
HARMFUL = "Just put it in the oven to dry it."  # -1.5
ANSWERS = [WRONG, GOOD, HARMFUL, RUDE]
GOLD_ORDER = [1, 3, 0, 2]


def test_the_fixture_answers_have_distinct_gold_scores():
    scores = [score(PROMPT, a) for a in ANSWERS]
    assert sorted(range(4), key=lambda i: -scores[i]) == GOLD_ORDER
    assert len(set(scores)) == 4


def test_bt_probability_properties():
    assert bt_probability(0.7, 0.7, 0.5) == 0.5
    assert bt_probability(1.5, 1.0, 0.5) == pytest.approx(1 / (1 + math.exp(-1.0)))
    for a, b, t in [(1.5, -0.5, 0.5), (0.2, 0.9, 1.0), (-3.0, 1.5, 0.1)]:
        assert bt_probability(a, b, t) + bt_probability(b, a, t) == pytest.approx(1.0)
    assert bt_probability(1.0, 0.0, 0.5) > bt_probability(1.0, 0.5, 0.5) > 0.5  # monotone in the margin
    assert bt_probability(1.0, 0.0, 0.1) > bt_probability(1.0, 0.0, 1.0)  # colder annotators agree more
    assert bt_probability(1.0, 0.0, 0.0) == 1.0 and bt_probability(0.0, 1.0, 0.0) == 0.0
    assert bt_probability(100.0, -100.0, 0.01) == 1.0  # no overflow
    assert bt_probability(-100.0, 100.0, 0.01) == 0.0
    with pytest.raises(ValueError):
        bt_probability(1.0, 0.0, -0.5)


def test_label_pair_records_gold_scores_of_chosen_and_rejected():
    pair = label_pair(PROMPT, GOOD, WRONG, random.Random(0))
    assert isinstance(pair, Pair) and pair.prompt == PROMPT
    assert {pair.chosen, pair.rejected} == {GOOD, WRONG}
    assert pair.chosen_score == score(PROMPT, pair.chosen)
    assert pair.rejected_score == score(PROMPT, pair.rejected)


def test_label_frequency_matches_the_bradley_terry_probability():
    rng, n, temperature = random.Random(0), 4000, 1.0
    expected = bt_probability(score(PROMPT, RUDE), score(PROMPT, WRONG), temperature)  # sigmoid(0.5) ~ 0.62
    wins = sum(label_pair(PROMPT, RUDE, WRONG, rng, temperature).chosen == RUDE for _ in range(n))
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_zero_temperature_is_the_noiseless_annotator():
    rng = random.Random(0)
    assert all(label_pair(PROMPT, HARMFUL, GOOD, rng, 0.0).chosen == GOOD for _ in range(50))


def test_pointwise_is_the_score_plus_gaussian_noise():
    rng, n = random.Random(0), 4000
    ratings = [pointwise(PROMPT, GOOD, rng, noise=0.3) for _ in range(n)]
    mean = sum(ratings) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in ratings) / (n - 1))
    assert mean == pytest.approx(score(PROMPT, GOOD), abs=4 * 0.3 / math.sqrt(n))
    assert sd == pytest.approx(0.3, rel=0.05)
    assert pointwise(PROMPT, GOOD, rng, noise=0.0) == score(PROMPT, GOOD)


def test_listwise_returns_a_permutation():
    rng = random.Random(0)
    for _ in range(20):
        assert sorted(listwise(PROMPT, ANSWERS, rng)) == [0, 1, 2, 3]
    assert listwise(PROMPT, [], rng) == []


def test_cold_listwise_gives_the_gold_ordering():
    rng = random.Random(0)
    assert listwise(PROMPT, ANSWERS, rng, temperature=0.0) == GOLD_ORDER
    assert all(listwise(PROMPT, ANSWERS, rng, temperature=0.01) == GOLD_ORDER for _ in range(20))


def test_listwise_first_place_follows_plackett_luce():
    rng, n, temperature = random.Random(1), 4000, 1.0
    weights = [math.exp(score(PROMPT, a) / temperature) for a in ANSWERS]
    expected = [w / sum(weights) for w in weights]
    firsts = Counter(listwise(PROMPT, ANSWERS, rng, temperature)[0] for _ in range(n))
    for i, p in enumerate(expected):
        assert abs(firsts[i] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (i, firsts[i] / n, p)


def test_two_answer_listwise_is_the_pairwise_label():
    rng, n, temperature = random.Random(2), 4000, 1.0
    expected = bt_probability(score(PROMPT, RUDE), score(PROMPT, WRONG), temperature)
    wins = sum(listwise(PROMPT, [RUDE, WRONG], rng, temperature)[0] == 0 for _ in range(n))
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
