"""DPO trainer on the tiny SFT policy: reference log-probs, learning, checkpoint, resume, 2-process parity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import training.dpo as dpo
from models.chat import prompt_ids, user
from models.checkpoint import verify
from tests.builders import (
    KILLS,
    assert_same_weights,
    kill_training,
    registry_view,
    train_watching_registry,
)
from training.dpo_config import DPOConfig
from training.evaluate import load_policy
from training.pairs import build_pairs

# 64 pairs, 2 epochs of 4 steps: a learning curve in about a second.
TINY = dict(pairs=64, eval_pairs=32, epochs=2.0, batch_size=16, lr=1e-3, warmup=1, max_length=96, eval_every=4,
            save_every=4, val_kl_samples=8, kl_samples=16, eval_prompts=4)


def tiny_dpo_config(out: Path, parent: Path, **overrides: Any) -> DPOConfig:
    return DPOConfig(**{"out": out, "parent": parent, **TINY, **overrides})


def history(out: Path) -> list[dict[str, float]]:
    return json.loads((out / "training_history.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_sft: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DPOConfig, list[str]]:
    """One uninterrupted tiny DPO run; also returns which pair sets had their reference log-probs computed."""
    computed: list[str] = []
    real = dpo.reference_logps

    def counting(reference, data, pad_id, dist):
        computed.append(f"{len(data)} pairs")
        return real(reference, data, pad_id, dist)

    cfg = tiny_dpo_config(tmp_path_factory.mktemp("dpo") / "dpo", tiny_sft)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpo, "reference_logps", counting)
        dpo.train_dpo(cfg)
    return cfg, computed


def test_config_rejects_nonsense(tiny_sft: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="beta"):
        tiny_dpo_config(tmp_path, tiny_sft, beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        tiny_dpo_config(tmp_path, tiny_sft, loss_type="hinge")
    with pytest.raises(ValueError, match="sigmoid loss only"):
        tiny_dpo_config(tmp_path, tiny_sft, loss_type="ipo", label_smoothing=0.1)


def test_reference_logps_are_computed_once_and_equal_the_policy_at_step_zero(trained):
    cfg, computed = trained
    assert computed == ["64 pairs", "32 pairs"]  # the training and held-out sets, once each
    policy, tokenizer = load_policy(cfg.parent)
    pairs = dpo.encode_pairs(tokenizer, build_pairs(cfg.parent, "train", cfg.pairs, cfg.seed, cfg.policy_share,
                                                     cfg.annotator_temperature), cfg.max_length)
    stored = load_file(str(dpo._cache_path(cfg, verify(cfg.parent).version, "train", cfg.pairs, cfg.seed)))["logps"]
    with torch.no_grad():
        fresh, counts = dpo.pair_logps(policy, pairs, tokenizer.pad_token_id)
    assert stored.shape == (cfg.pairs, 2) and bool((counts > 0).all())
    torch.testing.assert_close(stored, fresh, atol=1e-4, rtol=1e-5)
    first = history(cfg.out)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference: h = 0
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)


def test_training_lowers_the_loss_raises_margins_and_changes_parameters(trained):
    cfg, _ = trained
    records = history(cfg.out)
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    first, last = records[:2], records[-2:]
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first) - 0.05
    assert sum(r["rewards/margins"] for r in last) > sum(r["rewards/margins"] for r in first) + 0.05
    assert records[-1]["rewards/chosen"] > records[-1]["rewards/rejected"]
    assert {"eval/loss", "eval/rewards/accuracies", "objective/kl"} <= set(records[-1])
    sft, tuned = weights(cfg.parent), weights(cfg.out)
    assert sft.keys() == tuned.keys()
    assert any(not torch.equal(sft[k], tuned[k]) for k in sft)


def test_checkpoint_verifies_records_its_figures_and_generates(trained):
    cfg, _ = trained
    manifest = verify(cfg.out, kind="policy")
    assert manifest.method == "dpo"
    assert manifest.parent == verify(cfg.parent).version
    assert manifest.hyperparameters["beta"] == cfg.beta and manifest.hyperparameters["loss_type"] == "sigmoid"
    figures = manifest.figures
    for name in ("gold_reward_mean", "gold_reward_ci95", "sft_gold_reward_mean", "well_formed_rate", "kl_to_sft",
                 "kl_to_sft_ci95", "eval/loss", "eval/rewards/accuracies"):
        assert math.isfinite(figures[name]), name
    assert figures["kl_samples"] == cfg.kl_samples
    model = AutoModelForCausalLM.from_pretrained(str(cfg.out), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.out))
    ids = torch.tensor([prompt_ids(tokenizer, user("Can I put my teddy bear in the washer?"))])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_sampled_kl_is_zero_against_itself(tiny_sft: Path):
    policy, tokenizer = load_policy(tiny_sft)
    kl, _ = dpo.sampled_kl(policy, policy, tokenizer, ["Hello there", "What is 2 + 3?"], k=2)
    assert kl == 0.0


def test_training_time_counts_the_reference_log_probs(tiny_sft: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """On a clock that moves only while the reference log-probs are computed (500 s per pair set: train, held out),
    the manifest's training time is those 1000 s: they are part of DPO's cost."""
    now = [0.0]
    real = dpo.cached_reference_logps

    def slow(*args):
        now[0] += 500.0
        return real(*args)

    monkeypatch.setattr(dpo, "time", SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setattr(dpo, "cached_reference_logps", slow)
    manifest = dpo.train_dpo(tiny_dpo_config(tmp_path / "dpo", tiny_sft, epochs=0.25, val_kl_samples=0,
                                             kl_samples=0, eval_prompts=0))
    assert manifest.figures["train_seconds_this_run"] == 1000.0

@pytest.mark.parametrize("moment", KILLS)
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(moment: str, trained, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture):
    """`bon train dpo` killed with SIGKILL; the rerun continues from its last save with the cached reference
    log-probs and ends as the uninterrupted run (the same config but for how often it saves); the registry never
    lists a half-written checkpoint."""
    cfg, _ = trained
    # Sampled figures (KL, gold reward) cost most of a tiny run and do not steer training: left out here.
    resumed = tiny_dpo_config(tmp_path / "dpo", cfg.parent, save_every=2, val_kl_samples=0, kl_samples=0,
                              eval_prompts=0)
    killed = kill_training("dpo", resumed, moment, tmp_path / "killed.log")
    assert 0 < killed.step < resumed.steps and killed.listed == {}
    assert killed.half_written == (moment == "checkpoint-write")
    with caplog.at_level("INFO", logger="training.dpo"):
        train_watching_registry(lambda: dpo.train_dpo(resumed), tmp_path)
    assert f"resuming DPO at step {killed.step} of {resumed.steps}" in caplog.text
    assert "computing reference log-probs" not in caplog.text
    assert registry_view(tmp_path) == {"dpo": True}
    # Same batches, restored weights and Adam moments: the same numbers, to float rounding (the killed process
    # and this one may sum in another order).
    again, once = history(resumed.out), history(cfg.out)
    assert [r["step"] for r in again] == [r["step"] for r in once]
    for a, b in zip(again, once, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), a["step"]
    assert again[-1]["eval/loss"] == pytest.approx(once[-1]["eval/loss"], abs=1e-4)
    assert_same_weights(resumed.out, cfg.out, atol=1e-4)
