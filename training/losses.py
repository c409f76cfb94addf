"""Losses for reward modelling, DPO and PPO, as small pure functions over tensors.

Each loss returns `(loss, metrics)`: `loss` is a scalar that carries gradients, `metrics` maps TRL's
names (`rewards/chosen`, `policy/clipfrac_avg`, ...) to detached scalars ready to log.

Shapes: B is the batch, T the response length, V the vocabulary. Token-level tensors come with a
0/1 `mask` of shape (B, T) that is 1 on response tokens.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _detached(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in metrics.items()}


# ---------------------------------------------------------------------------------------------------------
# Token-level helpers


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the positions where the 0/1 `mask` is 1, over `dim` or over everything.

    An empty mask (a fully padded row, say) gives 0 rather than NaN.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise `values` to mean 0 and variance 1 over the masked positions (all rows pooled).

    The statistics use only masked positions, and the variance is the population (biased) one, so the
    masked values come out with variance exactly 1 (up to the 1e-8 guard). Positions outside the mask are
    transformed too but are meaningless. With `shift_mean=False` the mean is added back, so only the
    spread changes: TRL's choice for whitening rewards, and the default is its choice for advantages.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gather_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under its logits: (B, T, V), (B, T) -> (B, T).

    log_softmax before gather keeps it finite for large logits, where log(softmax(x)) gives -inf.
    """
    logprobs = logits.log_softmax(dim=-1)  # (B, T, V)
    return logprobs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logprobs = logits.log_softmax(dim=-1)  # (B, T, V)
    return -(logprobs.exp() * logprobs).sum(dim=-1)  # (B, T)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: Literal["k1", "k2", "k3"] = "k1") -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π; elementwise, same shape as inputs.

    With log_ratio = log π − log π_ref (Schulman 2020, "Approximating KL divergence", where his
    r = π_ref/π = exp(−log_ratio)):
    - k1 = log_ratio: unbiased, high variance, negative on some tokens;
    - k2 = ½ log_ratio²: biased (low bias when π ≈ π_ref), low variance, ≥ 0;
    - k3 = exp(−log_ratio) − 1 + log_ratio: unbiased, low variance, ≥ 0.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")


# ---------------------------------------------------------------------------------------------------------
# Reward model


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise reward-model loss −log σ(r_w − r_l − margin), averaged over the batch.

    `chosen_rewards`, `rejected_rewards` and the optional `margin` have shape (B,); the margin (Llama 2's
    graded preference) asks the chosen reward to win by at least that much.
    """
    logits = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        logits = logits - margin
    # Bradley–Terry: P(w ≻ l) = σ(r_w − r_l); Ouyang et al. 2022, eq. 1
    loss = -F.logsigmoid(logits).mean()
    return loss, _detached(
        {
            "loss": loss,
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# DPO


def dpo_implicit_reward(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward β·(log π(y|x) − log π_ref(y|x)), elementwise (Rafailov et al. 2023, eq. 5)."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO or IPO loss from sequence log-probabilities, each of shape (B,).

    With h = (π_w − ref_w) − (π_l − ref_l):
    - "sigmoid": −log σ(βh); with `label_smoothing` ε > 0, conservative DPO (cDPO), which treats each
      label as flipped with probability ε: −(1 − ε)·log σ(βh) − ε·log σ(−βh).
    - "ipo": (h − 1/(2β))², on whatever log-probs are passed. Azar et al. define h on sequence
      log-probs; TRL feeds IPO length-averaged ones. To match TRL, pass summed log-probs divided by the
      number of response tokens.
    The reward metrics are the implicit rewards β·(π − ref) in either case.
    """
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to the sigmoid loss only")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023, eq. 7; cDPO, Mitchell 2023, "A note on DPO with noisy preferences"
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        # IPO, Azar et al. 2023, eq. 17
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid' or 'ipo'")
    loss = losses.mean()

    chosen_rewards = dpo_implicit_reward(policy_chosen_logps, ref_chosen_logps, beta)  # (B,)
    rejected_rewards = dpo_implicit_reward(policy_rejected_logps, ref_rejected_logps, beta)  # (B,)
    return loss, _detached(
        {
            "loss": loss,
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy_chosen_logps.mean(),
            "logps/rejected": policy_rejected_logps.mean(),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# PPO
#
# Token-level tensors are (B, T). `logprobs` come from the policy being optimised, `old_logprobs` from the
# policy that sampled the rollout; ρ = π_θ/π_old per token.


def ppo_clip_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate −masked_mean(min(ρA, clip(ρ, 1 − ε, 1 + ε)·A)), token-level."""
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    # PPO-Clip, Schulman et al. 2017, eq. 7; max of the negated terms is the min of the objectives
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)  # (B, T)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    return loss, _detached(
        {
            "loss/policy_avg": loss,
            "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
            "policy/approxkl_avg": masked_mean(0.5 * log_ratio**2, mask),
            "val/ratio": masked_mean(ratio, mask),
        }
    )


def ppo_kl_penalty_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's KL-penalised surrogate −masked_mean(ρA) + β·masked_mean(KL(π_old‖π_θ)), token-level.

    The tokens were sampled from π_old, so the per-token KL(π_old‖π_θ) is the k3 estimator with π_old
    as the sampling policy: ρ − 1 − log ρ, unbiased, ≥ 0, and differentiable in θ. The controllers
    below adapt β between updates, as the paper does.
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    kl = kl_estimate(old_logprobs, logprobs, kind="k3")  # (B, T)
    # PPO with adaptive KL penalty, Schulman et al. 2017, eq. 8
    loss = -masked_mean(ratio * advantages, mask) + beta * masked_mean(kl, mask)
    return loss, _detached(
        {
            "loss/policy_avg": loss,
            "policy/approxkl_avg": masked_mean(0.5 * log_ratio**2, mask),
            "val/ratio": masked_mean(ratio, mask),
        }
    )


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ½·masked_mean(max((V − R)², (clip(V, V_old ± c) − R)²)), token-level.

    The clip keeps the value head within `clip_range` of the rollout's values, as PPO does for the
    policy (the OpenAI baselines' PPO2 value loss, which TRL follows).
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)  # (B, T)
    unclipped_loss = (values - returns) ** 2  # (B, T)
    clipped_loss = (clipped_values - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, _detached(
        {
            "loss/value_avg": loss,
            "val/clipfrac_avg": masked_mean((clipped_loss > unclipped_loss).float(), mask),
        }
    )


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns for left-aligned responses: (B, T) each.

    `mask` is 1…1 0…0 per row. The value after a row's last real token is 0 (the episode ends there), and
    positions outside the mask get advantage and return 0. Returns are advantages + values. Both are
    targets, so no gradient flows through them.
    """
    mask = mask.to(values.dtype)
    rewards = rewards.detach() * mask  # (B, T)
    values = values.detach() * mask  # (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        # GAE, Schulman et al. 2016, eq. 16: A_t = δ_t + γλ·A_{t+1}, δ_t = r_t + γV_{t+1} − V_t
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # (B,)
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


# ---------------------------------------------------------------------------------------------------------
# KL coefficient controllers


class AdaptiveKLController:
    """Adapts the KL coefficient so the measured KL tracks `target` (Ziegler et al. 2019, sec. 2.2).

    Each update multiplies `value` by 1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move `value` up when `current_kl` exceeds the target, down when below."""
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """A constant KL coefficient with `AdaptiveKLController`'s interface."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep `value` as it is."""
