"""The transformers reward backend the server runs (models/reward_hf.py) on the tiny checkpoints."""

import weakref

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from models.chat import render
from models.checkpoint import CheckpointError
from models.interface import ContextLengthExceeded, RewardSpec
from models.reward_hf import HFReward

MESSAGES = [{"role": "user", "content": "What can I do with my teddy bear today?"}]


@pytest.fixture(scope="module")
def reward(tiny_checkpoints):
    return HFReward.load(RewardSpec(path=tiny_checkpoints / "rm"))


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


def test_an_item_longer_than_the_model_reads_is_refused_not_truncated(reward):
    assert reward.max_length == 256  # the tiny RM's positions (its tokenizer allows 512)
    fits, too_long = (MESSAGES, "Sure!"), (MESSAGES, "You could read a short story. " * 60)
    with pytest.raises(ContextLengthExceeded, match="reads at most 256"):
        reward.score_batch([fits, too_long])
    assert reward.score_batch([fits])[0].tokens < 256


def test_closing_frees_the_model(tiny_checkpoints):
    reward = HFReward.load(RewardSpec(path=tiny_checkpoints / "rm"))
    model = weakref.ref(reward.model)
    reward.close()
    assert model() is None, "the closed reward model still holds its weights"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_closing_on_a_gpu_returns_its_memory(tiny_checkpoints):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    reward = HFReward.load(RewardSpec(path=tiny_checkpoints / "rm", options={"device": "cuda"}))
    assert torch.cuda.memory_reserved() > before
    reward.close()
    assert torch.cuda.memory_reserved() == before
