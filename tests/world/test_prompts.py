"""The world's prompts: deterministic, split by a hash of their text, varied, and read back to their topic."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from world import INTENTS, make_prompt, prompts, read_prompt, split_of


def test_prompts_are_deterministic_by_seed():
    assert prompts("train", 300, seed=0) == prompts("train", 300, seed=0)
    assert prompts("train", 300, seed=0) != prompts("train", 300, seed=1)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_prompts_are_distinct_and_of_their_split(split):
    drawn = prompts(split, 200, seed=3)
    assert len(drawn) == 200
    assert len({p.text for p in drawn}) == 200
    assert {split_of(p.text) for p in drawn} == {split}


def test_splits_are_disjoint():
    texts = {s: {p.text for p in prompts(s, 300, seed=5)} for s in ("train", "validation", "test")}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


def test_split_shares_are_about_90_5_5():
    rng = random.Random(0)
    shares = Counter(split_of(make_prompt(rng).text) for _ in range(20_000))
    assert abs(shares["train"] / 20_000 - 0.90) < 0.015
    assert abs(shares["validation"] / 20_000 - 0.05) < 0.01
    assert abs(shares["test"] / 20_000 - 0.05) < 0.01


def test_split_of_is_stable_across_processes_and_versions():
    # sha256 of the text, not Python's salted hash(): these must never move, or test prompts leak into training.
    assert split_of("What is 7 + 5?") == "train"
    assert split_of("Can you help me? What is the secret to great popcorn this weekend?") == "validation"
    assert split_of("Good morning! How much is 6 minus 5? I want to check my homework.") == "test"


def test_every_intent_appears_in_a_split():
    counts = Counter(p.intent for p in prompts("train", 1400, seed=0))
    assert set(counts) == set(INTENTS)
    assert min(counts.values()) > 1400 / len(INTENTS) * 0.7


def test_prompts_rarely_repeat():
    rng = random.Random(7)
    texts = [make_prompt(rng).text for _ in range(2000)]
    assert len(set(texts)) / len(texts) >= 0.95


def test_many_train_prompts_are_cheap_to_draw():
    drawn = prompts("train", 20_000, seed=0)
    assert len({p.text for p in drawn}) == 20_000


@pytest.mark.parametrize("intent", INTENTS)
def test_prompts_are_short_ascii_and_parse_back_to_their_intent(intent):
    rng = random.Random(intent)
    for _ in range(300):
        p = make_prompt(rng, intent)
        assert p.intent == intent
        assert p.text.isascii()
        assert (4 if intent == "arithmetic" else 6) <= len(p.text.split()) <= 20, p.text
        topic = read_prompt(p.text)
        assert topic is not None and topic.intent == intent, p.text


def test_read_prompt_parses_arithmetic_operands():
    assert read_prompt("What is 7 + 5?").answer == 12
    assert read_prompt("Can you subtract 4 from 13?").answer == 9
    assert read_prompt("Can you multiply 6 by 8?").answer == 48
    assert read_prompt("Mia has 9 apples and gives away 4. How many apples are left?").answer == 5
    assert read_prompt("There are 3 bags with 7 shells in each. How many shells are there in total?").answer == 21
    assert read_prompt("Tell me about the weather on Mars.") is None
