"""The reward backends against a real vLLM 0.32 reward server (the CPU build), on the tiny decoder RM.

One `vllm.entrypoints.openai.api_server --runner pooling` serves `root/rm` (float32, eager, a small KV cache)
and one bon server serves the same checkpoint with the `hf` reward backend. The tests check that:

- bon's `remote` backend on vLLM's `/classify` and `/pooling` (and on a bon server's `/classify`) returns the
  same raw scores as the in-process `hf` backend;
- vLLM applies the activation as read in its source: `PoolingParams.use_activation` unset means true for the
  classify task (`pooling_params.py`), and the classifier head then applies `get_act_fn(hf_config)`
  (`model_executor/layers/pooler/activations.py`), which for a one-label model is a sigmoid, unless the config's
  `problem_type` is `regression` (the identity, so `use_activation` changes nothing; a sentence-transformers
  cross-encoder's own activation is a case bon's `/classify` does not follow: no RM of ours is one). Measured
  on this RM (no `problem_type`): `/classify` and `/pooling`
  return sigmoid(score) with `use_activation` unset or true and the raw score with false. Measured by hand on a
  copy with `problem_type: regression`: the raw score in all three cases. The remote backend sends false, so it
  keeps the raw Bradley-Terry score on either kind of RM;
- bon's `/classify` answers a request with vLLM's fields and vLLM's default activation. vLLM 0.32 answers
  `{"id": "classify-...", "object": "list", "created", "model", "data": [{"index", "label", "probs",
  "num_classes"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0, "prompt_tokens_details":
  null, "completion_tokens_details": null}}`, `label` being the config's `id2label[argmax]` (`LABEL_0`).

Measured here: max |remote - hf| 8.9e-8 through vLLM (both endpoints) and 6.0e-8 through a bon server, over the
16 candidates below.

The vLLM server takes 60-90 s to start on two shared cores (the engine core is a spawned process that imports
torch again); everything else here takes a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoConfig, PretrainedConfig

from common.servers import Server
from models.interface import RewardSpec, ScoreItem, activate, classify_activation
from models.reward_hf import HFReward
from models.reward_remote import RemoteReward
from tests.builders import launch_server

pytestmark = pytest.mark.vllm

TOLERANCE = 1e-5
"""Both sides run the same float32 weights on the same token ids (same chat template, same tokenizer), so only
the kernels differ (vLLM's CPU attention and fused ops vs transformers' SDPA on a right-padded batch). Measured:
max |diff| about 1e-7 on scores of magnitude ~0.5, i.e. float32 rounding; 1e-5 leaves 100x headroom for another
CPU's summation order and still fails on any real mismatch (a wrong token, pooling position or activation moves
the score by 1e-2 or more)."""

SYSTEM = {"role": "system", "content": "You are a kind assistant for children."}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


CANDIDATES: list[ScoreItem] = [
    ([_user("What can I do with my teddy bear today?")], "You could read a short story with my teddy bear."),
    ([_user("What can I do with my teddy bear today?")], "No, that is not a good idea."),
    ([_user("Can you suggest an activity for the small dog?")], "Try to go for a walk together, it is fun."),
    ([_user("Can you suggest an activity for the small dog?")], "The answer is 7."),
    ([_user("How do I keep the old cat happy?")], "A nice idea is to sing a happy song."),
    ([_user("Is it a good idea to wash my teddy bear?")], "Sure! Build a pillow fort and then rest."),
    ([_user("What is two plus 4?")], "The answer is 6."),
    ([_user("What is two plus 4?")], ""),
    ([SYSTEM, _user("What can I do with a red kite today?")], "You could have a picnic with a red kite."),
    ([SYSTEM, _user("How do I keep our garden happy?")], "Plant some flowers. " * 8),
    ([_user("What is two plus 3?"), _assistant("The answer is 5."), _user("And two plus 4?")], "The answer is 6."),
    ([_user("What is two plus 3?"), _assistant("The answer is 5."), _user("And two plus 4?")], "It is 9."),
    ([_user("Can you suggest an activity for my little sister?"), _assistant("A nice idea is to draw a picture."),
      _user("Something outside?")], "Try to go for a walk together, it is fun."),
    ([SYSTEM, _user("What can I do with the old cat today?"), _assistant("You could play a quiet game."),
      _user("And after that?"), _assistant("Read a short story."), _user("Thanks!")], "You are welcome!"),
    ([_user("Is it a good idea to wash the small dog?"), _assistant("Sure! Have a picnic and then rest."),
      _user("That is not an answer.")], "No, that is not a good idea."),
    ([_user("héllo, ünïcode and emoji 🧸?")], "Sure! 🧸 Sing a happy song."),
]
"""16 (conversation, answer) pairs: single and multi-turn, with a system turn, an empty answer, a long answer and
bytes outside the tokenizer's training text."""

CONVERSATION = [*CANDIDATES[10][0], _assistant(CANDIDATES[10][1])]


@pytest.fixture(scope="module")
def rm_root(tiny_checkpoints: Path) -> Path:
    return tiny_checkpoints


@pytest.fixture(scope="module")
def servers(rm_root: Path, log_dir: Path, vllm_peers: dict[str, Server]) -> Iterator[dict[str, Server]]:
    """vLLM serving the RM (float32, eager, a small KV cache: `vllm_peers`), and a bon server (hf backends) serving
    the same RM."""
    with launch_server(rm_root, log_dir) as bon:
        yield {"vllm": vllm_peers["rm"], "bon": bon.wait(timeout_s=300)}


@pytest.fixture(scope="module")
def hf(rm_root: Path) -> Iterator[HFReward]:
    reward = HFReward.load(RewardSpec(path=rm_root / "rm"))
    yield reward
    reward.close()


def _post(url: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("server, endpoint", [("vllm", "/classify"), ("vllm", "/pooling"), ("bon", "/classify")])
def test_the_remote_backend_returns_the_hf_backends_raw_scores(servers, hf, server, endpoint):
    ours = hf.score_batch(CANDIDATES)
    remote = RemoteReward(servers[server].url + endpoint, "rm")
    try:
        theirs = remote.score_batch(CANDIDATES)
    finally:
        remote.close()
    expected, got = [s.value for s in ours], [s.value for s in theirs]
    assert [s.tokens for s in theirs] == [s.tokens for s in ours]  # the server's usage: the same token ids
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    print(f"{server}{endpoint}: max |remote - hf| = {worst:.3g} over {len(CANDIDATES)} candidates")
    assert worst <= TOLERANCE, f"{server}{endpoint}: max |diff| {worst:.3g}\nremote {got}\nhf     {expected}"
    assert max(expected) - min(expected) > 100 * TOLERANCE  # the candidates are told apart, not all alike


@pytest.mark.parametrize("endpoint", ["/classify", "/pooling"])
def test_vllm_squashes_a_one_label_score_unless_use_activation_is_false(servers, hf, endpoint):
    (raw,) = (s.value for s in hf.score_batch([CANDIDATES[10]]))
    url = servers["vllm"].url + endpoint
    key = "probs" if endpoint == "/classify" else "data"
    unset, false, true = (_post(url, model="rm", messages=CONVERSATION, **flag)["data"][0][key][0]
                          for flag in ({}, {"use_activation": False}, {"use_activation": True}))
    assert false == pytest.approx(raw, abs=TOLERANCE)
    assert unset == true == pytest.approx(_sigmoid(raw), abs=TOLERANCE)


def _skeleton(value: Any) -> Any:
    """A JSON value with its leaves replaced by their types: what two servers must agree on."""
    if isinstance(value, dict):
        return {key: _skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_skeleton(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize("flag", [{}, {"use_activation": False}, {"use_activation": True}])
def test_bons_classify_answers_as_vllms(servers, flag):
    request = {"model": "rm", "messages": CONVERSATION, **flag}
    ours, theirs = (_post(servers[name].url + "/classify", **request) for name in ("bon", "vllm"))
    assert _skeleton(ours) == _skeleton(theirs), f"bon {ours}\nvLLM {theirs}"
    assert ours["id"].startswith("classify-") and theirs["id"].startswith("classify-")
    # Same RM, same template and tokenizer: every value but the id, the time and float rounding is equal.
    for response in (ours, theirs):
        del response["id"], response["created"]
    (our_prob,), (their_prob,) = ours["data"][0].pop("probs"), theirs["data"][0].pop("probs")
    assert our_prob == pytest.approx(their_prob, abs=TOLERANCE)
    assert ours == theirs
    assert ours["usage"]["prompt_tokens"] > 0 and ours["data"][0]["label"] == "LABEL_0"


def _config(**fields: Any) -> PretrainedConfig:
    return PretrainedConfig(num_labels=1, **fields)


@pytest.mark.parametrize("fields", [{}, {"problem_type": "regression"}, {"problem_type": "multi_label_classification"}],
                         ids=["default", "regression", "multi-label"])
def test_bons_default_activation_is_vllms_for_one_label_reward_models(fields):
    """vLLM's own activation resolver against ours, on the configs it distinguishes (no server needed);
    transformers refuses `single_label_classification` with one label, so no checkpoint can carry it."""
    from vllm.model_executor.layers.pooler.activations import get_act_fn

    config = _config(**fields)
    scores = torch.tensor([[-3.5], [-0.25], [0.0], [0.7], [4.0]])
    expected = get_act_fn(config)(scores)[:, 0].tolist()
    ours = classify_activation(config)
    assert [activate(ours, x) for x in scores[:, 0].tolist()] == pytest.approx(expected, abs=1e-6)


def test_the_tiny_rm_config_is_the_sigmoid_case(rm_root):
    """The servers above run an RM without `problem_type`: the case where vLLM's default squashes."""
    config = AutoConfig.from_pretrained(rm_root / "rm")
    assert getattr(config, "problem_type", None) is None and classify_activation(config) == "sigmoid"
