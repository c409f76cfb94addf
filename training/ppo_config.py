"""Settings of PPO (RLHF with a learned reward) on the embedded assistant world.

The defaults fit the lead's budget: ≤ 20 minutes on 2 CPU cores for the ~4M-parameter SFT policy, and a gold
reward above the SFT policy's by more than its 95% confidence interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.checkpoint import checkpoint_root


@dataclass
class PPOConfig:
    out: Path = field(default_factory=lambda: checkpoint_root() / "ppo")
    """Checkpoint directory to write (resume state lives in `<root>/.runs/<name>`)."""
    parent: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """SFT policy: the start of the policy and of the critic's backbone, and the KL reference."""
    reward_model: Path = field(default_factory=lambda: checkpoint_root() / "rm")
    """Reward model scoring each full answer (read with its own tokenizer and chat template)."""
    variant: Literal["clip", "kl_penalty"] = "clip"
    """Policy loss: PPO's clipped surrogate, or the surrogate with an adaptive KL(π_old‖π) penalty."""
    steps: int = 60
    """PPO iterations: sample `rollouts` answers, score them, then `epochs` passes over them."""
    rollouts: int = 64
    """Answers sampled per iteration, one per train prompt (global, split across processes)."""
    sample_chunk: int = 16
    """Prompts sampled together under one generator seeded by (seed, step, chunk): the rollouts are then
    the same samples whatever the number of processes. Must divide `rollouts / world_size`."""
    max_new_tokens: int = 64
    """Answer length cap during rollouts; an answer that reaches it without EOS is penalised."""
    epochs: int = 2
    """Passes over each iteration's rollouts."""
    minibatch_size: int = 32
    """Rollouts per optimizer step (global, split across processes)."""
    lr: float = 1e-4
    """Peak learning rate of the policy (AdamW, short warm-up then cosine to 10%)."""
    value_lr: float = 3e-4
    """Peak learning rate of the critic."""
    warmup: int = 5
    """Warm-up iterations."""
    max_grad_norm: float = 1.0
    """Gradient clipping, per model."""
    clip_eps: float = 0.2
    """Clip range ε of the policy ratio (variant `clip`)."""
    value_clip: float = 0.2
    """Clip range of the critic around its rollout-time values."""
    gamma: float = 1.0
    """Discount of GAE (1: the answer is one episode with one final reward)."""
    lam: float = 0.95
    """λ of GAE."""
    kl_coef: float = 0.05
    """Coefficient β of the per-token KL(π‖π_SFT) penalty in the reward (initial value when adaptive)."""
    adaptive_kl: bool = True
    """Adapt `kl_coef` so the answer-level KL tracks `target_kl` (Ziegler et al. 2019)."""
    target_kl: float = 4.0
    """KL to the SFT reference, in nats per answer, that the adaptive coefficient aims at."""
    kl_horizon: int = 2_000
    """Rollouts over which the adaptive coefficient may move by about e^0.2."""
    penalty_beta: float = 1.0
    """Initial β of the `kl_penalty` variant's KL(π_old‖π) term, adapted towards `penalty_target`."""
    penalty_target: float = 0.01
    """Per-token KL(π_old‖π) per iteration that the `kl_penalty` variant's β aims at (Schulman et al. 2017)."""
    reward_norm_samples: int = 128
    """SFT answers scored at the start to normalise the RM to mean 0, std 1 on them (0: raw RM scores)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the (normalised) score of an answer that never emits EOS."""
    max_kl: float = 40.0
    """Runaway guard: stop when the mean KL to SFT (nats per answer) exceeds this for `guard_patience` steps."""
    min_entropy: float = 0.05
    """Collapse guard: stop when the mean per-token entropy stays below this (nats) for `guard_patience` steps."""
    collapse_share: float = 0.5
    """Collapse guard: stop when more than this share of an iteration's answers are one identical (or empty)
    answer for `guard_patience` steps."""
    guard_patience: int = 3
    """Consecutive iterations a guard must fail before the run stops."""
    train_prompts: int = 8_192
    """Train-split prompts the rollouts cycle through (a fresh shuffle per pass)."""
    val_prompts: int = 64
    """Fixed validation prompts for the periodic RM reward, gold reward and KL (0 skips validation)."""
    eval_every: int = 20
    """Iterations between validation passes."""
    save_every: int = 20
    """Iterations between resume saves."""
    eval_prompts: int = 128
    """Held-out prompts (4 answers each) for the final figures in the manifest (0 skips them)."""
    seed: int = 0
    """Seed of the prompts, the rollouts and the minibatch order."""

    def __post_init__(self) -> None:
        self.out, self.parent, self.reward_model = Path(self.out), Path(self.parent), Path(self.reward_model)
        if self.variant not in ("clip", "kl_penalty"):
            raise ValueError("variant must be clip or kl_penalty")
        for name in ("steps", "rollouts", "sample_chunk", "max_new_tokens", "epochs", "minibatch_size",
                     "kl_horizon", "guard_patience", "eval_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.rollouts % self.minibatch_size:
            raise ValueError("minibatch_size must divide rollouts")
        if self.rollouts % self.sample_chunk or self.reward_norm_samples % self.sample_chunk:
            raise ValueError("sample_chunk must divide rollouts and reward_norm_samples")
        if self.train_prompts < self.rollouts:
            raise ValueError("train_prompts must be at least rollouts")
        if not 0 < self.collapse_share <= 1:
            raise ValueError("collapse_share must be in (0, 1]")
        if min(self.kl_coef, self.target_kl, self.penalty_beta, self.penalty_target, self.max_kl) <= 0:
            raise ValueError("kl_coef, target_kl, penalty_beta, penalty_target and max_kl must be positive")
        if not 0 <= self.lam <= 1 or not 0 < self.gamma <= 1:
            raise ValueError("lam must be in [0, 1] and gamma in (0, 1]")
