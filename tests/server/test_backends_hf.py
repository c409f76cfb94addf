"""The transformers backends the server runs (models/policy_hf.py, models/reward_hf.py) on the tiny checkpoints."""

import asyncio
import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from models.chat import render
from models.checkpoint import CheckpointError
from models.interface import Cancelled, GenerationParams, PolicySpec, RewardSpec, checkpoint_version
from models.policy_hf import HFPolicy
from models.reward_hf import HFReward

MESSAGES = [{"role": "user", "content": "What can I do with my teddy bear today?"}]


@pytest.fixture(scope="module")
def policy(tiny_checkpoints):
    return HFPolicy.load(PolicySpec(name="sft", path=tiny_checkpoints / "sft"))


@pytest.fixture(scope="module")
def reward(tiny_checkpoints):
    return HFReward.load(RewardSpec(path=tiny_checkpoints / "rm"))


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


def test_rewards_are_raw_scores_independent_of_batch_padding(reward):
    answers = ["Sure!", "You could read a short story with my teddy bear, then rest.", "No.",
               "A nice idea is to have a picnic together, it is fun."]
    items = [(MESSAGES, a) for a in answers]
    scores = reward.score_batch(items)
    batched = [s.value for s in scores]
    alone = [reward.score_batch([item])[0].value for item in items]
    assert batched == pytest.approx(alone, abs=1e-5)
    # Each score says how many tokens the RM read for it: the length of its own, unpadded rendering.
    assert [s.tokens for s in scores] == [len(ids) for ids in reward.encode(items)]
    assert min(s.tokens for s in scores) < max(s.tokens for s in scores)  # not the padded width
    # The score is the single logit at the last token of the RM's own rendering of [user, assistant].
    tokenizer = reward.tokenizer
    text = render(tokenizer, [*MESSAGES, {"role": "assistant", "content": answers[1]}], False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = reward.model(input_ids=ids).logits[0, 0].item()
    assert batched[1] == pytest.approx(expected, abs=1e-5)
    assert answers[1] in tokenizer.decode(reward.encode(items[1:2])[0])


def test_the_activation_and_label_follow_the_checkpoints_config(reward):
    """vLLM's defaults for this config, as `/classify` applies them: no `problem_type`, so a sigmoid."""
    assert (reward.activation, reward.label) == ("sigmoid", "LABEL_0")
    regression = reward.model.config.__class__(**{**reward.model.config.to_dict(), "problem_type": "regression",
                                                  "id2label": {0: "reward"}})
    renamed = HFReward(LlamaForSequenceClassification(regression), reward.tokenizer, "v")
    assert (renamed.activation, renamed.label) == ("identity", "reward")


def test_a_reward_model_has_exactly_one_label(tiny_checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoints / "rm"))
    two = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2, num_labels=2))
    with pytest.raises(CheckpointError, match="one label"):
        HFReward(two, tokenizer, "v")


def test_checkpoints_are_verified_before_loading(tiny_checkpoints, tmp_path):
    assert checkpoint_version(tiny_checkpoints / "rm", "reward", False).startswith("rm-")
    with pytest.raises(CheckpointError, match="expected a reward"):
        checkpoint_version(tiny_checkpoints / "sft", "reward", False)
    plain = shutil.copytree(tiny_checkpoints / "rm", tmp_path / "plain-hf")
    (plain / "manifest.json").unlink()
    with pytest.raises(CheckpointError):
        checkpoint_version(plain, "reward", False)
    assert checkpoint_version(plain, "reward", True) == "unverified-plain-hf"
    (plain / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint_version(plain, "reward", True)
