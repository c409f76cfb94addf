import math
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


def test_weighted_vote_sums_softmax_weights_per_distinct_answer():
    texts = ["The answer is 7.", "the answer is 7", "The answer is 9", "The answer is 7!"]
    # "7": e^0.5 + e^0.4 + e^0.6 = 4.96 > e^1.2 = 3.32 for "9", though "9" is the single best candidate
    rewards = [0.5, 0.4, 1.2, 0.6]
    assert select("weighted_vote", texts, rewards, 1) == [3]  # the best-rewarded member of the winning group
    assert select("weighted_vote", texts, rewards, 2) == [3, 2]


def test_weighted_vote_does_not_depend_on_the_rewards_origin():
    """Three identical answers at −1 against one at −1.5: e^-1 · 3 > e^-1.5, so the three win (raw sums lose)."""
    texts = ["Bake bread.", "bake bread", "Bake  bread!", "Build a fort."]
    assert select("weighted_vote", texts, [-1.0, -1.0, -1.0, -1.5], 1) == [0]
    assert select("weighted_vote", texts, [9.0, 9.0, 9.0, 8.5], 1) == [0]


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_weighted_vote_weighs_by_exp_reward_over_tau(tau):
    """Two equal answers at 0 against one at r: the pair weighs 2, the single e^(r/τ); it wins from r > τ log 2."""
    texts = ["same", "Same.", "other"]
    edge = tau * math.log(2)
    assert select("weighted_vote", texts, [0.0, 0.0, edge - 0.01], 1, temperature=tau) == [0]
    assert select("weighted_vote", texts, [0.0, 0.0, edge + 0.01], 1, temperature=tau) == [2]


def test_weighted_vote_is_a_majority_vote_at_high_and_argmax_at_low_temperature():
    texts, rewards = ["a", "a", "a", "b"], [0.0, 0.0, 0.0, 5.0]
    assert select("weighted_vote", texts, rewards, 2, temperature=100.0) == [0, 3]
    assert select("weighted_vote", texts, rewards, 2, temperature=0.01) == [3, 0]
    # Groups whose weights underflow to 0 still come in order of their best reward.
    assert select("weighted_vote", list("abcd"), [0.0, 3.0, 9.0, 5.0], 4, temperature=1e-3) == [2, 3, 1, 0]


@pytest.mark.parametrize("seed", range(40))
def test_adding_a_constant_to_every_reward_never_changes_the_vote(seed):
    """Random answers (repeats likely), rewards on a grid of 1/8 and shifts that keep the sums exact in floats."""
    rng = random.Random(seed)
    size = rng.randint(1, 12)
    texts = [rng.choice(["yes", "Yes.", "no", "maybe", "No!", "sure"]) for _ in range(size)]
    rewards = [rng.randint(-40, 40) / 8 for _ in range(size)]
    n = rng.randint(1, size)
    tau = rng.choice([0.25, 1.0, 3.0])
    expected = select("weighted_vote", texts, rewards, n, temperature=tau)
    for shift in (-1000.0, -37.5, -0.125, 2.0, 64.25, 1e6):
        shifted = [r + shift for r in rewards]
        assert select("weighted_vote", texts, shifted, n, temperature=tau) == expected


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


@pytest.mark.parametrize("strategy", ["soft", "weighted_vote"])
def test_softmax_strategies_need_a_positive_temperature(strategy):
    with pytest.raises(ValueError, match=f"the {strategy} strategy needs a positive temperature"):
        select(strategy, ["a"], [1.0], 1, temperature=0.0)
