"""The transformers policy backend the server runs (models/policy_hf.py) on the tiny checkpoints."""

import asyncio

import pytest

from models.interface import Cancelled, GenerationParams, PolicySpec
from models.policy_hf import HFPolicy

MESSAGES = [{"role": "user", "content": "What can I do with my teddy bear today?"}]


@pytest.fixture(scope="module")
def policy(tiny_checkpoints):
    return HFPolicy.load(PolicySpec(name="sft", path=tiny_checkpoints / "sft"))


def generate(policy, n=4, seed=0, cancelled=lambda: False, **params):
    return asyncio.run(policy.generate(MESSAGES, n, GenerationParams(**params), seed, cancelled))


def test_the_same_seed_samples_the_same_candidates(policy):
    first, again = generate(policy, seed=3, max_tokens=12), generate(policy, seed=3, max_tokens=12)
    assert first == again and len(first.candidates) == 4
    assert generate(policy, seed=4, max_tokens=12).candidates != first.candidates
    assert first.prompt_tokens == policy.count_prompt_tokens(MESSAGES) > 0
    assert all(0 < c.tokens <= 12 for c in first.candidates)


def test_stop_strings_cut_the_text_and_finish_with_stop(policy):
    plain = generate(policy, n=8, seed=1, max_tokens=24, temperature=1.5)
    cut = generate(policy, n=8, seed=1, max_tokens=24, temperature=1.5, stop=("a",))
    for before, after in zip(plain.candidates, cut.candidates, strict=True):
        assert after.text == before.text.split("a")[0].strip()  # cut, then stripped, as vLLM does
        assert after.finish_reason == ("stop" if "a" in before.text else before.finish_reason)
        assert after.tokens == before.tokens  # what was generated is still what it cost


def test_cancelling_stops_between_decode_steps(policy):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        generate(policy, n=8, max_tokens=200, temperature=2.0, cancelled=cancelled)
    assert len(calls) == 4
