"""PPO trainer on the tiny SFT policy and tiny RM: learning, checkpoint, variants, guards, resume, 2-process parity."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import training.ppo as ppo
from bon.cli import main as bon_main
from models.chat import prompt_ids, user
from models.checkpoint import verify
from tests.builders import (
    KILLS,
    assert_same_weights,
    bon_train,
    config_flags,
    kill_training,
    registry_view,
    train_watching_registry,
)
from training.ppo_config import PPOConfig

# 16 rollouts of at most 24 tokens per iteration, 2 epochs of 2 minibatches: an iteration in well under a second.
TINY: dict[str, Any] = dict(steps=6, rollouts=16, sample_chunk=4, max_new_tokens=24, epochs=2, minibatch_size=8,
                            lr=1e-3, value_lr=1e-3, warmup=1, train_prompts=64, reward_norm_samples=16, val_prompts=8,
                            eval_every=3, save_every=3, eval_prompts=4, target_kl=1.0, kl_horizon=100)
# Figures that must agree between runs that should be the same run (timings and lr aside).
COMPARED = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/policy_avg", "loss/value_avg",
            "policy/entropy_avg", "val/ratio", "policy/clipfrac_avg")


def tiny_ppo_config(out: Path, sft: Path, rm: Path, **overrides: Any) -> PPOConfig:
    return PPOConfig(**{"out": out, "parent": sft, "reward_model": rm, **TINY, **overrides})


def history(out: Path) -> list[dict[str, float]]:
    return json.loads((out / "training_history.json").read_text())


def training_steps(out_or_history: Path | list[dict[str, float]]) -> list[dict[str, float]]:
    records = history(out_or_history) if isinstance(out_or_history, Path) else out_or_history
    return [h for h in records if "objective/kl" in h]


@pytest.fixture(scope="module")
def trained(tiny_sft: Path, tiny_rm: Path, tmp_path_factory: pytest.TempPathFactory) -> PPOConfig:
    """One uninterrupted tiny PPO run (clip variant, adaptive KL)."""
    cfg = tiny_ppo_config(tmp_path_factory.mktemp("ppo") / "ppo", tiny_sft, tiny_rm)
    ppo.train_ppo(cfg)
    return cfg


def test_config_rejects_nonsense(tiny_sft: Path, tiny_rm: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="variant"):
        tiny_ppo_config(tmp_path, tiny_sft, tiny_rm, variant="reinforce")
    with pytest.raises(ValueError, match="minibatch_size must divide"):
        tiny_ppo_config(tmp_path, tiny_sft, tiny_rm, minibatch_size=5)
    with pytest.raises(ValueError, match="sample_chunk"):
        tiny_ppo_config(tmp_path, tiny_sft, tiny_rm, sample_chunk=5)


def test_reward_rises_kl_is_reported_and_the_checkpoint_is_a_plain_policy(trained: PPOConfig, tiny_sft: Path,
                                                                          tiny_rm: Path):
    manifest = verify(trained.out, kind="policy")
    assert manifest.method == "ppo" and manifest.parent == verify(tiny_sft).version
    assert manifest.hyperparameters["reward_model_version"] == verify(tiny_rm).version
    assert manifest.hyperparameters["kl_coef"] == trained.kl_coef
    figures = manifest.figures
    for name in ("gold_reward_mean", "gold_reward_ci95", "rm_reward_mean", "kl_to_sft_mean", "well_formed_rate"):
        assert isinstance(figures[name], float), name
    assert figures["kl_to_sft_mean"] > 0

    steps = training_steps(trained.out)
    assert [h["step"] for h in steps] == list(range(1, trained.steps + 1))
    for name in ("objective/kl", "objective/rlhf_reward", "objective/scores", "policy/clipfrac_avg",
                 "policy/entropy_avg", "val/ratio", "loss/value_avg", "loss/policy_avg", "objective/kl_coef"):
        assert all(name in h for h in steps), name
    # The objective PPO maximises rises (the tiny RM barely ranks the tiny policy's answers, so most of the gain
    # is learning to end answers: the missing-EOS penalty).
    objective = [h["objective/rlhf_reward"] for h in steps]
    assert sum(objective[-2:]) / 2 > sum(objective[:2]) / 2 + 0.2, objective
    assert steps[-1]["val/num_eos_tokens"] > steps[0]["val/num_eos_tokens"]
    assert steps[0]["objective/kl"] == 0.0  # the first rollouts come from the SFT policy itself
    assert all(h["objective/kl"] > 0 for h in steps[2:])
    assert steps[-1]["objective/kl_coef"] != trained.kl_coef  # adaptive
    assert "eval/gold_reward" in history(trained.out)[0] and "eval/kl" in history(trained.out)[-1]

    tuned, sft = load_file(str(trained.out / "model.safetensors")), load_file(str(tiny_sft / "model.safetensors"))
    assert tuned.keys() == sft.keys()  # no value head inside
    assert any(not torch.equal(tuned[k], sft[k]) for k in sft)
    model = AutoModelForCausalLM.from_pretrained(str(trained.out))
    assert isinstance(model, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(str(trained.out))
    ids = torch.tensor([prompt_ids(tok, user("What is 3 + 4?"))])
    assert model.generate(ids, max_new_tokens=6, do_sample=False).shape[1] > ids.shape[1]


def test_kl_penalty_variant_trains_and_adapts_its_beta(tiny_sft: Path, tiny_rm: Path, tmp_path: Path):
    cfg = tiny_ppo_config(tmp_path / "ppo", tiny_sft, tiny_rm, variant="kl_penalty", steps=2, val_prompts=0,
                          eval_prompts=0, adaptive_kl=False)
    ppo.train_ppo(cfg)
    steps = training_steps(cfg.out)
    assert len(steps) == 2 and all("policy/clipfrac_avg" not in h for h in steps)
    assert steps[0]["policy/penalty_beta"] == cfg.penalty_beta != steps[1]["policy/penalty_beta"]
    assert all(h["objective/kl_coef"] == cfg.kl_coef for h in steps)  # fixed
    assert steps[1]["objective/kl"] > 0


def test_training_time_counts_the_reward_normalisation_rollouts(tiny_sft: Path, tiny_rm: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    """On a clock that moves only during the rollouts that normalise the reward (1000 s), the manifest's training
    time is those 1000 s: they are part of PPO's cost."""
    now = [0.0]
    real = ppo.make_rollouts

    def slow(*args):
        if args[-1][0] == "reward-norm":  # the rollouts' tag
            now[0] += 1000.0
        return real(*args)

    monkeypatch.setattr(ppo, "time", SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setattr(ppo, "make_rollouts", slow)
    manifest = ppo.train_ppo(tiny_ppo_config(tmp_path / "ppo", tiny_sft, tiny_rm, steps=1, val_prompts=0,
                                             eval_prompts=0))
    assert manifest.figures["train_seconds_this_run"] == 1000.0

def test_runaway_kl_stops_the_cli_with_a_clear_message(tiny_sft: Path, tiny_rm: Path, tmp_path: Path):
    cfg = tiny_ppo_config(tmp_path / "ppo", tiny_sft, tiny_rm, lr=0.03, adaptive_kl=False, max_kl=0.5,
                          guard_patience=1, steps=4, val_prompts=0, eval_prompts=0)
    with pytest.raises(SystemExit) as stopped:
        bon_main(["train", "ppo", *config_flags(cfg)])
    message = str(stopped.value.code)
    assert "KL to the SFT reference ran away" in message and "max_kl=0.5" in message, message
    assert not cfg.out.exists()


def test_collapse_guard_names_the_identical_answers(tiny_sft: Path, tiny_rm: Path, tmp_path: Path):
    cfg = tiny_ppo_config(tmp_path, tiny_sft, tiny_rm, guard_patience=2)
    record = {"step": 7, "objective/kl": 1.0, "objective/kl_coef": 0.05, "policy/entropy_avg": 1.0,
              "rollout/identical_share": 0.9, "rollout/empty_share": 0.9}
    strikes: dict[str, int] = {}
    ppo._check_guards(record, strikes, cfg)  # one strike is not enough
    with pytest.raises(ppo.PPOInstabilityError, match="90% of the answers at iteration 7 are one and the same"):
        ppo._check_guards(record, strikes, cfg)


@pytest.mark.parametrize("moment", KILLS)
def test_a_killed_run_resumes_where_it_saved_and_ends_as_the_uninterrupted_one(
        moment: str, trained: PPOConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """`bon train ppo` killed with SIGKILL; the rerun restores the policy, the critic, Adam's moments, the KL
    controller and the reward normalisation, and ends as the uninterrupted run (the same config but for how often
    it saves); the registry never lists a half-written checkpoint."""
    # Validation and the final figures sample answers that do not steer training: left out here.
    cfg = tiny_ppo_config(tmp_path / "ppo", trained.parent, trained.reward_model, save_every=2, val_prompts=0,
                          eval_prompts=0)
    killed = kill_training("ppo", cfg, moment, tmp_path / "killed.log")
    assert 0 < killed.step < cfg.steps and killed.listed == {}
    assert killed.half_written == (moment == "checkpoint-write")
    with caplog.at_level("INFO", logger="training.ppo"):
        train_watching_registry(lambda: ppo.train_ppo(cfg), tmp_path)
    assert f"resuming PPO at iteration {killed.step} of {cfg.steps}" in caplog.text
    assert registry_view(tmp_path) == {"ppo": True}
    resumed, reference = training_steps(cfg.out), training_steps(trained.out)
    assert [h["step"] for h in resumed] == list(range(1, cfg.steps + 1))
    # The killed process and this one may sum in another order: equal to float rounding, not bit for bit.
    for got, want in zip(resumed, reference, strict=True):
        for name in COMPARED:
            assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-5), (got["step"], name)
    assert_same_weights(cfg.out, trained.out, atol=1e-4)


def test_two_processes_follow_the_loss_curve_of_one(tiny_sft: Path, tiny_rm: Path, tmp_path: Path):
    """Same global batch: rollouts are the same samples, each rank takes half of every minibatch, DDP averages.

    The only difference is float rounding (half-batch matmuls, the all-reduce): measured differences are at most
    1e-6 over 6 iterations; the test allows 1e-4 relative (1e-5 absolute) on every compared figure.
    """
    one = tiny_ppo_config(tmp_path / "one", tiny_sft, tiny_rm, steps=3, val_prompts=0, eval_prompts=0)
    two = tiny_ppo_config(tmp_path / "two", tiny_sft, tiny_rm, steps=3, val_prompts=0, eval_prompts=0)
    ppo.train_ppo(one)
    done = bon_train("ppo", two, processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert verify(two.out).hyperparameters["world_size"] == 2
    for a, b in zip(training_steps(one.out), training_steps(two.out), strict=True):
        for name in COMPARED:
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-5), (a["step"], name, a[name], b[name])
