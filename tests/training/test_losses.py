import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    dpo_implicit_reward,
    dpo_loss,
    entropy_from_logits,
    gae,
    gather_logprobs,
    kl_estimate,
    masked_mean,
    masked_whiten,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
    value_loss,
)


def t64(*values):
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Token-level helpers


def test_masked_mean_ignores_padding_and_empty_rows():
    values = t64([1.0, 3.0, 100.0], [5.0, 100.0, 100.0], [100.0, 100.0, 100.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    torch.testing.assert_close(masked_mean(values, mask, dim=1), t64(2.0, 5.0, 0.0))


def test_masked_whiten_standardises_masked_positions_only():
    values = t64([1.0, 2.0, 3.0, 1e6], [4.0, 5.0, 1e6, -1e6])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    whitened = masked_whiten(values, mask)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_mean(whitened**2, mask).item() == pytest.approx(1.0, abs=1e-6)
    scaled = masked_whiten(values, mask, shift_mean=False)
    assert masked_mean(scaled, mask).item() == pytest.approx(3.0)


def test_gather_logprobs_matches_log_softmax_gather():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 3), generator=generator)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits, labels), expected)


def test_gather_logprobs_is_stable_for_large_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]])
    assert torch.log(torch.softmax(logits, dim=-1))[0, 0, 2].isinf()  # the naive form underflows
    logprobs = gather_logprobs(logits.expand(1, 3, 3), torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(logprobs, torch.tensor([[0.0, -1e4, -2e4]]))


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(logits), t64([math.log(4), 0.0]))


# ---------------------------------------------------------------------------------------------------------
# KL estimators


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_kl_estimators_approximate_the_true_kl(kind):
    p, q = t64(0.5, 0.3, 0.2), t64(0.2, 0.3, 0.5)
    true_kl = (p * (p / q).log()).sum().item()  # ≈ 0.275
    samples = torch.multinomial(p, 100_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = kl_estimate(p.log()[samples], q.log()[samples], kind=kind).mean().item()
    # The per-sample std is about 0.7 for k1 (less for k3): a standard error of 0.0023, so 0.01 is 4σ.
    assert estimate == pytest.approx(true_kl, abs=0.01)


def test_k3_is_nonnegative_and_all_estimators_vanish_when_equal():
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 3
    ref_logprobs = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 3
    assert (kl_estimate(logprobs, ref_logprobs, kind="k3") >= 0).all()
    for kind in ("k1", "k2", "k3"):
        assert (kl_estimate(logprobs, logprobs, kind=kind) == 0).all()


def test_kl_estimator_hand_values():
    log_ratio = math.log(2.0)  # π = 2·π_ref on this token
    logprobs, ref_logprobs = t64(log_ratio), t64(0.0)
    assert kl_estimate(logprobs, ref_logprobs, kind="k1").item() == pytest.approx(log_ratio)
    assert kl_estimate(logprobs, ref_logprobs, kind="k2").item() == pytest.approx(0.5 * log_ratio**2)
    assert kl_estimate(logprobs, ref_logprobs, kind="k3").item() == pytest.approx(0.5 - 1 + log_ratio)


# ---------------------------------------------------------------------------------------------------------
# Bradley–Terry


def test_bradley_terry_hand_values():
    loss, metrics = bradley_terry_loss(t64(1.0, 2.0), t64(0.0, 3.0))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx(1.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(1.5)
    assert metrics["rewards/margins"].item() == pytest.approx(0.0)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)


def test_bradley_terry_margin_shifts_the_logit():
    loss, _ = bradley_terry_loss(t64(1.0), t64(0.0), margin=t64(1.0))
    assert loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (-2.5, 3.0), (7.0, 7.0), (30.0, -30.0)])
def test_bradley_terry_swapping_the_pair(a, b):
    loss_ab, _ = bradley_terry_loss(t64(a), t64(b))
    loss_ba, _ = bradley_terry_loss(t64(b), t64(a))
    # softplus(−x) − softplus(x) = −x
    assert (loss_ab - loss_ba).item() == pytest.approx(-(a - b), abs=1e-12)
    assert (torch.exp(-loss_ab) + torch.exp(-loss_ba)).item() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# DPO


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_is_log_2_when_the_policy_is_the_reference(label_smoothing):
    generator = torch.Generator().manual_seed(0)
    chosen = -torch.rand(5, generator=generator, dtype=torch.float64) * 50
    rejected = -torch.rand(5, generator=generator, dtype=torch.float64) * 50
    loss, metrics = dpo_loss(chosen, rejected, chosen, rejected, beta=0.3, label_smoothing=label_smoothing)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["rewards/margins"].item() == 0.0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = t64(-4.0, -9.0).requires_grad_(), t64(-5.0, -2.0).requires_grad_()
    loss, _ = dpo_loss(chosen, rejected, t64(-4.5, -8.0), t64(-5.5, -3.0))
    loss.backward()
    assert (chosen.grad < 0).all()
    assert (rejected.grad > 0).all()


def test_dpo_sigmoid_hand_value_and_metrics():
    # h = (−1 − (−2)) − (−3 − (−2)) = 2 and β·h = 1
    args = t64(-1.0), t64(-3.0), t64(-2.0), t64(-2.0)
    loss, metrics = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert metrics["loss"].item() == pytest.approx(loss.item())
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == 1.0
    assert metrics["logps/chosen"].item() == -1.0
    assert metrics["logps/rejected"].item() == -3.0

    smoothed, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))
    assert smoothed.item() == pytest.approx(expected)


def test_ipo_hand_value():
    # h = 2 and 1/(2β) = 5, so the loss is (2 − 5)²
    loss, _ = dpo_loss(t64(-1.0), t64(-3.0), t64(-2.0), t64(-2.0), beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(9.0)


def test_ipo_rejects_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(t64(-1.0), t64(-3.0), t64(-2.0), t64(-2.0), loss_type="ipo", label_smoothing=0.1)


def test_dpo_implicit_reward():
    policy, ref = t64(-1.0, -3.0), t64(-3.0, -2.0)
    torch.testing.assert_close(dpo_implicit_reward(policy, ref, beta=0.25), t64(0.5, -0.25))
    _, metrics = dpo_loss(policy, ref, ref, ref, beta=0.25)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.125)


# ---------------------------------------------------------------------------------------------------------
# PPO

# Two response tokens with ρ = 1.5 and 0.5, then a padding token holding garbage.
LOGPROBS = t64([math.log(1.5), math.log(0.5), 9.0])
OLD_LOGPROBS = t64([0.0, 0.0, -9.0])
ADVANTAGES = t64([1.0, -2.0, 50.0])
MASK = torch.tensor([[1, 1, 0]])


def test_ppo_clip_is_inactive_at_ratio_one():
    advantages = t64([1.0, -2.0, 4.0])
    mask = torch.tensor([[1, 1, 1]])
    loss, metrics = ppo_clip_loss(OLD_LOGPROBS, OLD_LOGPROBS, advantages, mask)
    assert loss.item() == pytest.approx(-1.0)
    assert metrics["policy/clipfrac_avg"].item() == 0.0
    assert metrics["val/ratio"].item() == 1.0
    assert metrics["policy/approxkl_avg"].item() == 0.0


def test_ppo_clip_hand_value():
    # Token 1: min(1.5·1, 1.2·1) = 1.2. Token 2: min(0.5·(−2), 0.8·(−2)) = −1.6. Both clipped.
    loss, metrics = ppo_clip_loss(LOGPROBS, OLD_LOGPROBS, ADVANTAGES, MASK, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 - 1.6) / 2)
    assert metrics["loss/policy_avg"].item() == pytest.approx(loss.item())
    assert metrics["policy/clipfrac_avg"].item() == 1.0
    assert metrics["val/ratio"].item() == pytest.approx(1.0)
    assert metrics["policy/approxkl_avg"].item() == pytest.approx(
        0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2
    )


def test_ppo_clip_mask_excludes_padding():
    loss, metrics = ppo_clip_loss(LOGPROBS, OLD_LOGPROBS, ADVANTAGES, MASK)
    unpadded_loss, unpadded_metrics = ppo_clip_loss(
        LOGPROBS[:, :2], OLD_LOGPROBS[:, :2], ADVANTAGES[:, :2], MASK[:, :2]
    )
    assert loss.item() == pytest.approx(unpadded_loss.item())
    for name, value in metrics.items():
        assert value.item() == pytest.approx(unpadded_metrics[name].item())


@pytest.mark.parametrize(("ratio", "advantage"), [(1.5, 1.0), (0.5, -1.0)])
def test_ppo_clip_gradient_vanishes_outside_the_band(ratio, advantage):
    logprobs = t64([math.log(ratio)]).requires_grad_()
    loss, _ = ppo_clip_loss(logprobs, t64([0.0]), t64([advantage]), torch.tensor([[1]]))
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_ppo_clip_gradient_flows_where_the_objective_is_pessimistic():
    # ρ < 1 − ε with A > 0: the unclipped term is the smaller one, so it still pulls ρ up.
    logprobs = t64([math.log(0.5)]).requires_grad_()
    loss, _ = ppo_clip_loss(logprobs, t64([0.0]), t64([1.0]), torch.tensor([[1]]))
    loss.backward()
    assert logprobs.grad.item() == pytest.approx(-0.5)


def test_ppo_kl_penalty_hand_value():
    # ρ = (2, 0.5): the k3 penalty ρ − 1 − log ρ averages 0.25 where k1 (−log ρ) would average 0.
    logprobs = t64([math.log(2.0), math.log(0.5), 9.0])
    loss, metrics = ppo_kl_penalty_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, beta=0.1)
    surrogate = -(2.0 * 1.0 + 0.5 * -2.0) / 2
    kl = ((2.0 - 1 - math.log(2.0)) + (0.5 - 1 - math.log(0.5))) / 2
    assert loss.item() == pytest.approx(surrogate + 0.1 * kl)
    assert loss.item() == pytest.approx(-0.5 + 0.1 * 0.25)
    assert metrics["loss/policy_avg"].item() == pytest.approx(loss.item())
    assert metrics["val/ratio"].item() == pytest.approx(1.25)
    assert metrics["policy/approxkl_avg"].item() == pytest.approx(0.5 * math.log(2.0) ** 2)


def test_ppo_kl_penalty_at_ratio_one_is_the_plain_surrogate():
    loss, _ = ppo_kl_penalty_loss(OLD_LOGPROBS, OLD_LOGPROBS, ADVANTAGES, MASK, beta=10.0)
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2)


def test_value_loss_hand_values():
    returns, mask = t64([2.0, 1.0, 0.0]), torch.tensor([[1, 1, 0]])
    # Token 1 moved 0.5 from its old value: clipped to 0.7, (0.7 − 2)² = 1.69 beats (1 − 2)² = 1.
    # Token 2 did not move: (2 − 1)² = 1 either way. The third is padding.
    values, old_values = t64([1.0, 2.0, 40.0]), t64([0.5, 2.0, -40.0])
    loss, metrics = value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert metrics["loss/value_avg"].item() == pytest.approx(loss.item())
    assert metrics["val/clipfrac_avg"].item() == 0.5

    # Within the clip range: plain ½·MSE.
    loss, metrics = value_loss(t64([1.9, 1.1, 40.0]), t64([2.0, 1.0, -40.0]), returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.1**2 + 0.1**2) / 2)
    assert metrics["val/clipfrac_avg"].item() == 0.0


# ---------------------------------------------------------------------------------------------------------
# GAE


def _episodes():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    values = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return rewards, values, mask


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_values():
    rewards, values, mask = _episodes()
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = (rewards * mask).flip(1).cumsum(1).flip(1)  # (B, T)
    torch.testing.assert_close(advantages, (reward_to_go - values) * mask)
    torch.testing.assert_close(returns, reward_to_go * mask)


def test_gae_with_lambda_zero_is_the_td_error():
    rewards, values, mask = _episodes()
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = F.pad((values * mask)[:, 1:], (0, 1))  # (B, T), 0 after the last real token
    torch.testing.assert_close(advantages, (rewards + 0.9 * next_values - values) * mask)


def test_gae_three_step_hand_value():
    # γλ = 0.72. δ = (0 + 0.9·0.6 − 0.5, 0 + 0.9·0.7 − 0.6, 1 + 0 − 0.7) = (0.04, 0.03, 0.3).
    # A_2 = 0.3, A_1 = 0.03 + 0.72·0.3 = 0.246, A_0 = 0.04 + 0.72·0.246 = 0.21712.
    advantages, returns = gae(
        t64([0.0, 0.0, 1.0]), t64([0.5, 0.6, 0.7]), torch.ones(1, 3), gamma=0.9, lam=0.8
    )
    torch.testing.assert_close(advantages, t64([0.21712, 0.246, 0.3]))
    torch.testing.assert_close(returns, t64([0.71712, 0.846, 1.0]))


def test_gae_masked_positions_are_zero_and_do_not_leak():
    rewards, values, mask = _episodes()
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert (advantages[mask == 0] == 0).all()
    assert (returns[mask == 0] == 0).all()
    short_advantages, short_returns = gae(
        rewards[1:2, :3], values[1:2, :3], mask[1:2, :3], gamma=0.9, lam=0.8
    )
    torch.testing.assert_close(advantages[1:2, :3], short_advantages)
    torch.testing.assert_close(returns[1:2, :3], short_returns)


def test_gae_targets_carry_no_gradient():
    rewards, values, mask = _episodes()
    advantages, returns = gae(rewards, values.requires_grad_(), mask)
    assert not advantages.requires_grad and not returns.requires_grad


# ---------------------------------------------------------------------------------------------------------
# KL controllers and metrics


def test_adaptive_kl_controller_tracks_the_target():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, n_steps=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))
    raised = controller.value
    controller.update(current_kl=3.0, n_steps=256)  # error −0.5 clipped to −0.2
    assert controller.value == pytest.approx(raised * (1 - 0.2 * 256 / 10_000))
    controller.update(current_kl=6.0, n_steps=256)
    assert controller.value == pytest.approx(raised * (1 - 0.2 * 256 / 10_000))


def test_fixed_kl_controller_stays_constant():
    controller = FixedKLController(kl_coef=0.05)
    for current_kl in (0.0, 100.0):
        controller.update(current_kl=current_kl, n_steps=256)
    assert controller.value == 0.05


@pytest.mark.parametrize(
    "compute",
    [
        lambda x: bradley_terry_loss(x[0], x[1]),
        lambda x: dpo_loss(x[0], x[1], x[1], x[0]),
        lambda x: ppo_clip_loss(x, x.detach() + 0.1, x.detach(), torch.ones_like(x)),
        lambda x: ppo_kl_penalty_loss(x, x.detach() + 0.1, x.detach(), torch.ones_like(x), beta=0.1),
        lambda x: value_loss(x, x.detach() + 0.5, x.detach() - 1, torch.ones_like(x)),
    ],
)
def test_metrics_are_detached_scalars_and_loss_has_a_gradient(compute):
    x = t64([-1.0, -2.0], [-3.0, -0.5]).requires_grad_()
    loss, metrics = compute(x)
    assert loss.ndim == 0 and loss.requires_grad
    assert metrics and all(value.ndim == 0 and not value.requires_grad for value in metrics.values())
