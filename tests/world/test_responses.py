"""The world's responses: deterministic, showing the flaws asked for, and flawed at the rate asked for."""

from __future__ import annotations

import random

import pytest

from world import FLAWS, STYLE_FLAWS, Prompt, corpus, make_prompt, make_response, sample_flaws, sft_examples, split_of


def test_make_response_is_deterministic_and_shows_the_asked_flaws():
    p = Prompt("Can I put my teddy bear in the washer?", "care")
    a = make_response(p, random.Random(1), frozenset({"rude"}))
    assert a == make_response(p, random.Random(1), frozenset({"rude"}))
    assert a.flaws == frozenset({"rude"})
    assert make_response(p, random.Random(1)).flaws == frozenset()


def test_make_response_refuses_unknown_flaws_and_foreign_prompts():
    with pytest.raises(ValueError):
        make_response(Prompt("What is 7 + 5?", "arithmetic"), random.Random(0), frozenset({"sarcastic"}))
    with pytest.raises(ValueError):
        make_response(Prompt("Tell me about the weather on Mars.", "activity"), random.Random(0))


def test_responses_are_short_ascii_and_clean_ones_end_like_sentences():
    rng = random.Random(2)
    for _ in range(500):
        p = make_prompt(rng)
        clean = make_response(p, rng)
        rambling = make_response(p, rng, frozenset({"rambling"}))
        assert clean.text.isascii() and clean.text.endswith((".", "!", "?"))
        assert len(clean.text.split()) <= 46, clean.text  # a good answer: 12-40 words, a few slightly more
        if p.intent != "arithmetic":
            assert len(clean.text.split()) >= 10, clean.text
        assert len(rambling.text.split()) <= 80, rambling.text


def test_sample_flaws_rate_and_shape():
    rng = random.Random(0)
    draws = [sample_flaws(rng, 1 / 3) for _ in range(9000)]
    flawed = [d for d in draws if d]
    assert abs(len(flawed) / len(draws) - 1 / 3) < 0.02
    assert all(1 <= len(d) <= 2 for d in flawed)
    pairs = [d for d in flawed if len(d) == 2]
    assert 0.15 < len(pairs) / len(flawed) < 0.35
    assert all(d & set(STYLE_FLAWS) for d in pairs)  # a second flaw is always one of manner
    assert set().union(*flawed) == set(FLAWS)
    assert not any(sample_flaws(rng, 0.0) for _ in range(100))


def test_sft_examples_are_mostly_good_and_deterministic():
    examples = sft_examples("train", 1200, seed=0)
    assert examples == sft_examples("train", 1200, seed=0)
    assert examples != sft_examples("train", 1200, seed=1)
    flawed = sum(bool(r.flaws) for _, r in examples) / len(examples)
    assert 0.28 < flawed < 0.39  # about a third flawed: good answers are clearly the majority
    assert all(split_of(p.text) == "train" for p, _ in examples)


def test_corpus_yields_a_prompt_and_a_response_per_example():
    texts = list(corpus(200, seed=0))
    assert len(texts) == 400
    assert texts == list(corpus(200, seed=0))
    assert all(split_of(t) == "train" for t in texts[::2])
    words = {w.strip(".,!?").lower() for t in corpus(1500, seed=0) for w in t.split()}
    assert 400 < len(words) < 3000  # a moderate vocabulary: hundreds of content words, not thousands of rare ones
