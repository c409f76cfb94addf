import random
from collections import Counter

import pytest

from server.selection import normalise, select


def test_argmax_returns_the_top_n_best_first():
    rewards = [0.1, 2.0, -1.0, 1.5]
    assert select("argmax", ["a", "b", "c", "d"], rewards, 1) == [1]
    assert select("argmax", ["a", "b", "c", "d"], rewards, 3) == [1, 3, 0]


def test_argmax_breaks_ties_by_candidate_order():
    assert select("argmax", ["a", "b", "c"], [1.0, 1.0, 1.0], 2) == [0, 1]


def test_normalise_ignores_case_whitespace_and_end_punctuation():
    assert normalise("  The answer is  7. ") == normalise("the answer is 7") == "the answer is 7"


def test_weighted_vote_sums_rewards_per_distinct_answer():
    texts = ["The answer is 7.", "the answer is 7", "The answer is 9", "The answer is 7!"]
    rewards = [0.5, 0.4, 1.2, 0.6]  # "7" sums to 1.5 > 1.2, though "9" is the single best candidate
    assert select("weighted_vote", texts, rewards, 1) == [3]  # the best-rewarded member of the winning group
    assert select("weighted_vote", texts, rewards, 2) == [3, 2]


def test_weighted_vote_fills_up_when_fewer_answers_than_n():
    texts = ["yes", "Yes.", "no"]
    assert select("weighted_vote", texts, [1.0, 2.0, 0.5], 3) == [1, 2, 0]


def test_soft_is_seeded_and_favours_high_rewards():
    rewards = [0.0, 1.0, 3.0]
    first = [select("soft", ["a", "b", "c"], rewards, 1, temperature=1.0, rng=random.Random(s))[0] for s in range(400)]
    again = [select("soft", ["a", "b", "c"], rewards, 1, temperature=1.0, rng=random.Random(s))[0] for s in range(400)]
    assert first == again
    counts = Counter(first)
    # P(c) = e^3 / (1 + e + e^3) = 0.84
    assert counts[2] / 400 == pytest.approx(0.84, abs=0.06)
    assert counts[2] > counts[1] > counts[0]


def test_soft_with_small_temperature_is_argmax_and_returns_distinct_candidates():
    rewards = [0.0, 1.0, 3.0, 2.0]
    picks = select("soft", list("abcd"), rewards, 4, temperature=1e-3, rng=random.Random(0))
    assert picks == [2, 3, 1, 0]


def test_soft_survives_huge_rewards():
    assert select("soft", ["a", "b"], [1e6, 1e6 - 1], 1, temperature=0.5, rng=random.Random(1)) in ([0], [1])


@pytest.mark.parametrize("n", [0, 4])
def test_n_outside_the_candidates_is_refused(n):
    with pytest.raises(ValueError):
        select("argmax", ["a", "b", "c"], [1.0, 2.0, 3.0], n)


def test_soft_needs_a_positive_temperature():
    with pytest.raises(ValueError):
        select("soft", ["a"], [1.0], 1, temperature=0.0)
