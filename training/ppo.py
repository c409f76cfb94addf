"""PPO from a reward model: the policy samples answers, the RM scores them, a critic and GAE turn scores into
per-token advantages, and several clipped epochs move the policy, held near the SFT reference by a KL penalty.

Each iteration (Ziegler et al. 2019; Ouyang et al. 2022):
1. rollouts: one answer per train prompt from the current policy at temperature 1, each process sampling its
   share of the prompts in chunks whose generator is seeded by (seed, step, chunk), so 1 and K processes draw
   the same samples; then the rollouts of every process are gathered, so each holds the whole batch;
2. reward: the RM's score of the full answer at its last token (normalised to mean 0, std 1 on SFT answers,
   minus `missing_eos_penalty` if the answer never ended) and −β·(log π − log π_SFT) at every token;
3. GAE over the critic's values, advantages whitened over the batch;
4. `epochs` passes over shuffled minibatches: the clipped (or KL-penalised) surrogate for the policy and the
   clipped value loss for the critic, token means taken over the global minibatch.

The critic is a copy of the SFT backbone with a zero-initialised scalar head per token. Not the RM: the RM may
be an encoder with another tokenizer, while the critic must value every prefix of the policy's own tokens, which
the SFT backbone already reads; the zero head starts at the normalised mean score. It lives only in the resume
state: the checkpoint is the plain `LlamaForCausalLM` policy.

Guards stop a run that goes off the rails (KL to SFT running away, entropy collapsing, one answer for every
prompt) with a `PPOInstabilityError` that says what happened and what to change.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import world
from models.batching import pad_batch, position_ids
from models.chat import prompt_ids, user
from models.checkpoint import Manifest, verify
from models.sampling import SamplingParams, sample_answers
from training.common import Dist, batches, cosine_lr, mean_ci95, optimizer_step, save_resume, save_trained, start_run
from training.evaluate import decode_answer, evaluate_policy, judge_answers
from training.losses import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    gather_logprobs,
    masked_mean,
    masked_whiten,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
    value_loss,
)
from training.ppo_config import PPOConfig
from training.rm import score_texts

log = logging.getLogger(__name__)

EVAL_MAX_NEW_TOKENS = 96
"""Answer cap of validation and final figures: the one `bon eval policy` samples with."""


class PPOInstabilityError(RuntimeError):
    """PPO went off the rails (KL to the reference ran away, or the policy collapsed); the message says how."""


@dataclass
class Scorer:
    """The reward model with its own tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> Tensor:
        return torch.tensor(score_texts(self.model, self.tokenizer, list(zip(prompts, answers, strict=True))))


@dataclass
class Rollouts:
    """Answers with what PPO needs of them. Sequences are a left-padded prompt then a right-padded answer."""

    input_ids: Tensor  # (B, P+R)
    attention_mask: Tensor  # (B, P+R)
    response_mask: Tensor  # (B, R) 1 on answer tokens, the EOS included
    ended: Tensor  # (B,) 1 where the answer emitted EOS
    scores: Tensor  # (B,) raw RM scores
    logprobs: Tensor  # (B, R) under the policy that sampled
    ref_logprobs: Tensor  # (B, R) under the SFT reference
    values: Tensor  # (B, R) of the critic

    def rows(self, index: Sequence[int]) -> Rollouts:
        return Rollouts(*(getattr(self, f)[list(index)] for f in self.__dataclass_fields__))


def _generator(*parts: object) -> torch.Generator:
    """A generator seeded by a digest of `parts`, e.g. ("rollout", seed, step, chunk)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _max_over_ranks(value: int, dist: Dist) -> int:
    if dist.world_size == 1:
        return value
    t = torch.tensor(value)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t)


def _gather(t: Tensor, dist: Dist) -> Tensor:
    """Concatenate every rank's rows, in rank order (the order of the global batch)."""
    if dist.world_size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _in_batches(fn: Callable[[slice], Tensor], n: int, size: int) -> Tensor:
    return torch.cat([fn(slice(i, i + size)) for i in range(0, n, size)])


# ---------------------------------------------------------------------------------------------------------
# Forward passes over packed sequences


def pack(prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int, width_prompt: int,
         width_answer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts left-padded to `width_prompt`, answers right-padded to `width_answer`: ids, attention, answer mask."""
    head_ids, head_mask = pad_batch(prompts, pad_id, left=True, width=width_prompt)  # (B, P)
    answer_ids, answer_mask = pad_batch(answers, pad_id, width=width_answer)  # (B, R)
    return torch.cat([head_ids, answer_ids], 1), torch.cat([head_mask, answer_mask], 1), answer_mask.float()


def answer_logits(model: torch.nn.Module, ids: Tensor, attention: Tensor, width_answer: int) -> Tensor:
    """Policy logits that predict each answer token: (B, P+R) -> (B, R, V)."""
    out = model(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention),
                logits_to_keep=width_answer + 1, use_cache=False)
    return out.logits[:, :-1]  # (B, R, V): position P-1+t predicts answer token t


def answer_logprobs(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Log-probabilities of the answer tokens, 1.0 on padding (as TRL) so that ratios there are exactly 1."""
    labels = ids[:, ids.shape[1] - logits.shape[1] :]  # (B, R)
    return gather_logprobs(logits.float(), labels).masked_fill(mask == 0, 1.0)  # (B, R)


def answer_values(critic: torch.nn.Module, ids: Tensor, attention: Tensor, mask: Tensor) -> Tensor:
    """The critic's value of the state before each answer token: (B, P+R) -> (B, R), 0 on padding."""
    out = critic(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention), use_cache=False)
    width = mask.shape[1]
    return out.logits[:, -width - 1 : -1, 0].float().masked_fill(mask == 0, 0.0)  # (B, R)


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, ids: Tensor, attention: Tensor, mask: Tensor,
                      batch_size: int) -> Tensor:
    return _in_batches(lambda s: answer_logprobs(answer_logits(model, ids[s], attention[s], mask.shape[1]), ids[s],
                                                 mask[s]), len(ids), batch_size)


# ---------------------------------------------------------------------------------------------------------
# Rollouts


def rollout_answers(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]],
                    first_index: int, chunk: int, max_new_tokens: int, tag: tuple[object, ...]) -> list[list[int]]:
    """One answer per prompt at temperature 1, EOS appended when emitted.

    Prompt `first_index + i` of the global batch is sampled in chunk `(first_index + i) // chunk` with a generator
    seeded by (`tag`, chunk): the same samples whichever process draws them.
    """
    if first_index % chunk or len(prompts) % chunk:
        raise ValueError(f"a process's {len(prompts)} prompts do not split into sample chunks of {chunk}")
    policy.eval()
    out = []
    for start in range(0, len(prompts), chunk):
        groups = sample_answers(policy, tokenizer, prompts[start : start + chunk], 1,
                                SamplingParams(max_new_tokens, 1.0), batch_prompts=chunk,
                                generator=_generator(*tag, (first_index + start) // chunk))
        out.extend(answer for (answer,) in groups)
    policy.train()
    return out


def make_rollouts(policy: PreTrainedModel, reference: PreTrainedModel, critic: PreTrainedModel, scorer: Scorer,
                  tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], cfg: PPOConfig, dist: Dist,
                  tag: tuple[object, ...]) -> Rollouts:
    """Sample and score this rank's share of `prompts` (the global batch); return every rank's rollouts."""
    mine = dist.local_slice(prompts)
    encoded = [prompt_ids(tokenizer, user(p)) for p in mine]
    answers = rollout_answers(policy, tokenizer, encoded, dist.rank * len(mine), cfg.sample_chunk,
                              cfg.max_new_tokens, tag)
    width_prompt = _max_over_ranks(max(len(p) for p in encoded), dist)
    width_answer = _max_over_ranks(max(len(a) for a in answers), dist)
    ids, attention, mask = pack(encoded, answers, tokenizer.pad_token_id, width_prompt, width_answer)
    size = cfg.minibatch_size
    with torch.no_grad():
        logprobs = sequence_logprobs(policy, ids, attention, mask, size)
        ref_logprobs = sequence_logprobs(reference, ids, attention, mask, size)
        values = _in_batches(lambda s: answer_values(critic, ids[s], attention[s], mask[s]), len(ids), size)
    ended = torch.tensor([float(a[-1] == tokenizer.eos_token_id) for a in answers])
    scores = scorer(mine, [decode_answer(tokenizer, a) for a in answers])
    local = Rollouts(ids, attention, mask, ended, scores.float(), logprobs, ref_logprobs, values)
    return Rollouts(*(_gather(getattr(local, f), dist) for f in local.__dataclass_fields__))


def shape_rewards(r: Rollouts, kl_coef: float, score_mean: float, score_std: float,
                  missing_eos_penalty: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token rewards (B, R), the scores they end with (B,) and the per-token KL (B, R).

    Reward at token t: −β·(log π − log π_ref) (the k1 estimate of KL(π‖π_ref), Ziegler et al. 2019, eq. 2),
    plus the normalised RM score at the answer's last token.
    """
    kl = (r.logprobs - r.ref_logprobs) * r.response_mask  # (B, R)
    score = (r.scores - score_mean) / score_std - missing_eos_penalty * (1 - r.ended)  # (B,)
    rewards = -kl_coef * kl  # (B, R)
    last = r.response_mask.sum(1).long() - 1  # (B,)
    rewards[torch.arange(len(last)), last] += score
    return rewards, score, kl


# ---------------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate(policy: PreTrainedModel, reference: PreTrainedModel, scorer: Scorer,
             tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], k: int, seed: int) -> dict[str, float]:
    """RM reward, gold reward and KL to the reference (nats per answer) of `k` sampled answers per prompt."""
    policy.eval()
    encoded = [prompt_ids(tokenizer, user(p)) for p in prompts]
    groups = sample_answers(policy, tokenizer, encoded, k, SamplingParams(EVAL_MAX_NEW_TOKENS, 1.0),
                            generator=torch.Generator().manual_seed(seed))
    answers = [answer for group in groups for answer in group]
    repeated = [e for e in encoded for _ in range(k)]
    ids, attention, mask = pack(repeated, answers, tokenizer.pad_token_id, max(map(len, encoded)),
                                max(map(len, answers)))
    kl = ((sequence_logprobs(policy, ids, attention, mask, 64) - sequence_logprobs(reference, ids, attention, mask, 64))
          * mask).sum(1)  # (n*k,)
    texts = [decode_answer(tokenizer, a) for a in answers]
    gold = judge_answers(prompts, [texts[i * k : (i + 1) * k] for i in range(len(prompts))])
    kl_mean, kl_ci = mean_ci95(kl.view(len(prompts), k).mean(1).tolist())
    policy.train()
    return {"rm_reward": scorer([p for p in prompts for _ in range(k)], texts).mean().item(),
            "gold_reward": gold["gold_reward_mean"], "gold_reward_ci95": gold["gold_reward_ci95"],
            "kl": kl_mean, "kl_ci95": kl_ci, "well_formed_rate": gold["well_formed_rate"],
            "answer_tokens": mask.sum(1).mean().item()}


# ---------------------------------------------------------------------------------------------------------
# Guards


def _check_guards(record: dict[str, float], strikes: dict[str, int], cfg: PPOConfig) -> None:
    """Count consecutive failing iterations per guard; raise once one has failed `guard_patience` times."""
    failing = {
        # `not <=` so that a NaN KL fails too
        "kl": not record["objective/kl"] <= cfg.max_kl,
        "entropy": record["policy/entropy_avg"] < cfg.min_entropy,
        "collapse": record["rollout/identical_share"] > cfg.collapse_share,
    }
    for name, failed in failing.items():
        strikes[name] = strikes.get(name, 0) + 1 if failed else 0
    step, n = int(record["step"]), cfg.guard_patience
    if strikes["kl"] >= n:
        raise PPOInstabilityError(
            f"KL to the SFT reference ran away: {record['objective/kl']:.2f} nats per answer at iteration {step}, "
            f"above max_kl={cfg.max_kl} for {n} iterations in a row (kl_coef is {record['objective/kl_coef']:.3g}). "
            "The policy is leaving the region where the reward model can be trusted; lower lr, raise kl_coef, "
            "lower target_kl, or raise max_kl if this much drift is intended.")
    if strikes["entropy"] >= n:
        raise PPOInstabilityError(
            f"the policy collapsed: mean per-token entropy {record['policy/entropy_avg']:.4f} nats at iteration "
            f"{step}, below min_entropy={cfg.min_entropy} for {n} iterations in a row; it has become nearly "
            "deterministic. Lower lr or raise kl_coef.")
    if strikes["collapse"] >= n:
        raise PPOInstabilityError(
            f"the policy collapsed: {record['rollout/identical_share']:.0%} of the answers at iteration {step} "
            f"are one and the same answer ({record['rollout/empty_share']:.0%} are empty), above "
            f"collapse_share={cfg.collapse_share} for {n} iterations in a row; it is likely exploiting the reward "
            "model. Lower lr, raise kl_coef, or raise missing_eos_penalty if the answers are empty.")


def _identical_and_empty(r: Rollouts) -> tuple[float, float]:
    """Share of the batch taken by its most common answer, and share of empty answers."""
    answers = [tuple(row[m.bool()].tolist()) for row, m in zip(r.input_ids[:, -r.response_mask.shape[1] :],
                                                               r.response_mask, strict=True)]
    content = (r.response_mask.sum(1) - r.ended).tolist()  # answer tokens without the EOS
    n = len(answers)
    return Counter(answers).most_common(1)[0][1] / n, sum(c == 0 for c in content) / n


# ---------------------------------------------------------------------------------------------------------
# Training


def _load(cfg: PPOConfig) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedModel, Scorer,
                                   PreTrainedTokenizerBase]:
    verify(cfg.parent, kind="policy")
    verify(cfg.reward_model, kind="reward")
    options: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "local_files_only": True}
    policy = AutoModelForCausalLM.from_pretrained(str(cfg.parent), **options)
    reference = AutoModelForCausalLM.from_pretrained(str(cfg.parent), **options).eval().requires_grad_(False)
    critic_config = AutoConfig.from_pretrained(str(cfg.parent), num_labels=1, local_files_only=True)
    critic_config.classifier_dropout = 0.0  # the values of a rollout and of its update must be the same function
    critic = AutoModelForTokenClassification.from_pretrained(str(cfg.parent), config=critic_config, **options)
    torch.nn.init.zeros_(critic.score.weight)
    if critic.score.bias is not None:
        torch.nn.init.zeros_(critic.score.bias)
    rm = AutoModelForSequenceClassification.from_pretrained(str(cfg.reward_model), **options)
    scorer = Scorer(rm.eval().requires_grad_(False),
                    AutoTokenizer.from_pretrained(str(cfg.reward_model), local_files_only=True))
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.parent), local_files_only=True)
    return policy.train(), reference, critic.train(), scorer, tokenizer


def _reward_norm(cfg: PPOConfig, make: Callable[[Sequence[str], tuple[object, ...]], Rollouts]) -> tuple[float,
                                                                                                        float]:
    """Mean and std of the RM on SFT answers to fresh train prompts (Ziegler et al. 2019, sec. 2.2)."""
    if not cfg.reward_norm_samples:
        return 0.0, 1.0
    prompts = [p.text for p in world.prompts("train", cfg.reward_norm_samples, cfg.seed + 3)]
    scores = make(prompts, ("reward-norm", cfg.seed)).scores
    return scores.mean().item(), max(scores.std().item(), 1e-6)


def _update(policy: torch.nn.Module, critic: torch.nn.Module, optimizer: torch.optim.Optimizer, r: Rollouts,
            advantages: Tensor, returns: Tensor, cfg: PPOConfig, beta: float, step: int,
            dist: Dist) -> dict[str, float]:
    """`epochs` passes of minibatch updates; metrics are token means over all of them."""
    totals: dict[str, Tensor] = {}
    n_updates = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(r.scores), generator=_generator("minibatch", cfg.seed, step, epoch)).tolist()
        for start in range(0, len(order), cfg.minibatch_size):
            everyone = order[start : start + cfg.minibatch_size]
            index = dist.local_slice(everyone)
            mb = r.rows(index)
            mask = mb.response_mask
            # Each rank's token mean, weighted by its share of the minibatch's tokens: DDP's average of the
            # gradients is then the gradient of the token mean over the global minibatch, as one process takes.
            weight = mask.sum() * dist.world_size / r.response_mask[everyone].sum()
            logits = answer_logits(policy, mb.input_ids, mb.attention_mask, mask.shape[1])  # (b, R, V)
            logprobs = answer_logprobs(logits, mb.input_ids, mask)  # (b, R)
            if cfg.variant == "clip":
                policy_loss, metrics = ppo_clip_loss(logprobs, mb.logprobs, advantages[index], mask, cfg.clip_eps)
            else:
                policy_loss, metrics = ppo_kl_penalty_loss(logprobs, mb.logprobs, advantages[index], mask, beta)
            values = answer_values(critic, mb.input_ids, mb.attention_mask, mask)  # (b, R)
            critic_loss, critic_metrics = value_loss(values, mb.values, returns[index], mask, cfg.value_clip)
            loss = (policy_loss + critic_loss) * weight
            if not torch.isfinite(loss):
                raise PPOInstabilityError(
                    f"the loss became non-finite at iteration {step + 1} (policy {policy_loss.item():.3g}, value "
                    f"{critic_loss.item():.3g}): the updates diverged. Lower lr or value_lr.")
            optimizer_step(optimizer, loss, [policy, critic], cfg.max_grad_norm)
            metrics |= critic_metrics | {"policy/entropy_avg": masked_mean(entropy_from_logits(logits.detach()), mask)}
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0) + value * weight
            n_updates += 1
    return {name: dist.all_reduce_mean(total / n_updates).item() for name, total in totals.items()}


def ppo_iteration(policy: torch.nn.Module, critic: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  r: Rollouts, kl_ctl: AdaptiveKLController | FixedKLController, beta_ctl: AdaptiveKLController,
                  reward_norm: tuple[float, float], cfg: PPOConfig, step: int, dist: Dist) -> dict[str, float]:
    """Rewards, GAE and the updates of one iteration's rollouts; then the KL controllers move. Returns its figures."""
    rewards, score, kl = shape_rewards(r, kl_ctl.value, *reward_norm, cfg.missing_eos_penalty)
    advantages, returns = gae(rewards, r.values, r.response_mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, r.response_mask)
    metrics = _update(policy, critic, optimizer, r, advantages, returns, cfg, beta_ctl.value, step, dist)
    identical, empty = _identical_and_empty(r)
    kl_sum = kl.sum(1)  # (B,) nats per answer
    record = metrics | {
        "objective/kl": kl_sum.mean().item(),
        "objective/kl_coef": kl_ctl.value,
        "objective/scores": r.scores.mean().item(),
        "objective/rlhf_reward": (score - kl_ctl.value * kl_sum).mean().item(),
        "objective/non_score_reward": (-kl_ctl.value * kl_sum).mean().item(),
        "val/num_eos_tokens": r.ended.sum().item(),
        "rollout/answer_tokens": r.response_mask.sum(1).mean().item(),
        "rollout/identical_share": identical,
        "rollout/empty_share": empty,
    }
    if cfg.variant == "kl_penalty":
        record["policy/penalty_beta"] = beta_ctl.value
        beta_ctl.update(metrics["policy/approxkl_avg"], 1)
    kl_ctl.update(record["objective/kl"], cfg.rollouts)
    return record


def train_ppo(cfg: PPOConfig) -> Manifest | None:
    """Train, validate, resume if interrupted, and write the checkpoint. Returns its manifest on rank 0.

    Raises `PPOInstabilityError` when a guard trips (on every rank, since the guards read global figures).
    """
    run = start_run(cfg.out, cfg.seed)
    dist = run.dist
    policy, reference, critic, scorer, tokenizer = _load(cfg)
    optimizer = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": cfg.lr},
                                   {"params": list(critic.parameters()), "lr": cfg.value_lr}],
                                  weight_decay=0.0, eps=1e-5)
    models = {"policy": policy, "value": critic}
    state = run.resume(models, optimizer, cfg)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    beta_ctl = AdaptiveKLController(cfg.penalty_beta, cfg.penalty_target, horizon=1)
    kl_ctl.value = state.extra.get("kl_coef", kl_ctl.value)
    beta_ctl.value = state.extra.get("penalty_beta", beta_ctl.value)
    strikes: dict[str, int] = state.extra.setdefault("strikes", {})

    def make(prompts: Sequence[str], tag: tuple[object, ...]) -> Rollouts:
        return make_rollouts(policy, reference, critic, scorer, tokenizer, prompts, cfg, dist, tag)

    started = time.time()  # train_seconds_this_run counts the normalisation rollouts too: PPO's own work
    if "reward_norm" not in state.extra:
        state.extra["reward_norm"] = _reward_norm(cfg, make)
    score_mean, score_std = state.extra["reward_norm"]
    pool = [p.text for p in world.prompts("train", cfg.train_prompts, cfg.seed)]
    val_prompts = [p.text for p in world.prompts("validation", cfg.val_prompts, cfg.seed + 1)] if cfg.val_prompts \
        else []

    def validation() -> dict[str, float]:
        report = validate(policy, reference, scorer, tokenizer, val_prompts, 1, cfg.seed + 1)
        return {f"eval/{k}": v for k, v in report.items()}

    if state.step:
        log.info("resuming PPO at iteration %d of %d", state.step, cfg.steps)
    elif dist.is_main and val_prompts:
        state.history.append({"step": 0} | validation())
    policy_ddp, critic_ddp = dist.wrap_ddp(policy), dist.wrap_ddp(critic)
    with dist.progress(cfg.steps, state.step, f"ppo ({cfg.variant})") as bar:
        for index in batches(len(pool), cfg.rollouts, cfg.seed, state.step, cfg.steps):
            tick = time.time()
            for group, peak in zip(optimizer.param_groups, (cfg.lr, cfg.value_lr), strict=True):
                group["lr"] = cosine_lr(state.step, cfg.steps, peak, cfg.warmup)
            r = make([pool[i] for i in index], ("rollout", cfg.seed, state.step))
            record = {"step": state.step + 1}
            record |= ppo_iteration(policy_ddp, critic_ddp, optimizer, r, kl_ctl, beta_ctl, (score_mean, score_std),
                                    cfg, state.step, dist)
            record |= {"lr": optimizer.param_groups[0]["lr"], "time/iteration_seconds": time.time() - tick}
            state.step += 1
            if dist.is_main and val_prompts and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
                record |= validation()
            state.history.append(record)
            state.extra |= {"kl_coef": kl_ctl.value, "penalty_beta": beta_ctl.value}
            _check_guards(record, strikes, cfg)
            bar.set_postfix(score=f"{record['objective/scores']:.2f}", kl=f"{record['objective/kl']:.2f}",
                            refresh=False)
            bar.update(1)
            if dist.is_main and state.step % cfg.save_every == 0 and state.step < cfg.steps:
                save_resume(run.dir, models, optimizer, state)
    if not dist.is_main:
        return None

    figures: dict[str, Any] = {"train_seconds_this_run": round(time.time() - started, 1),
                               "kl_coef_final": kl_ctl.value}
    if cfg.eval_prompts:
        held = world.prompts("validation", cfg.eval_prompts, cfg.seed + 2)
        report = evaluate_policy(policy.eval(), tokenizer, held, k=4)
        figures |= {k: report[k] for k in ("gold_reward_mean", "gold_reward_ci95", "well_formed_rate",
                                           "flawless_rate", "flaw_rates")}
        sampled = validate(policy, reference, scorer, tokenizer, [p.text for p in held], 4, cfg.seed + 2)
        figures |= {"rm_reward_mean": sampled["rm_reward"], "kl_to_sft_mean": sampled["kl"],
                    "kl_to_sft_ci95": sampled["kl_ci95"], "answer_tokens_mean": sampled["answer_tokens"]}

    hyper = asdict(cfg) | {"out": str(cfg.out), "parent": str(cfg.parent), "reward_model": str(cfg.reward_model),
                           "reward_model_version": verify(cfg.reward_model).version, "world_size": dist.world_size,
                           "reward_norm": [score_mean, score_std]}
    manifest = save_trained(cfg.out, policy, tokenizer, state.history, kind="policy", method="ppo",
                            parent=verify(cfg.parent).version, hyperparameters=hyper, figures=figures)
    save_resume(run.dir, models, optimizer, state)
    return manifest


def train_ppo_for_cli(cfg: PPOConfig) -> Manifest | None:
    """`bon train ppo`: `train_ppo`, but a tripped guard ends the process with its explanation and status 1."""
    try:
        return train_ppo(cfg)
    except PPOInstabilityError as exc:
        raise SystemExit(f"bon train ppo stopped: {exc}") from exc
