"""Direct Preference Optimization of the SFT policy against a frozen copy of itself (DPO, or IPO).

The reference's log-probabilities of every pair are computed once, before training, and cached beside the pairs
(`<root>/.data/`), so the reference never runs inside the training loop and a resumed or repeated run reuses them.
The KL to the reference is measured the honest way: sample answers from the tuned policy on held-out prompts and
average Σ_t log π_θ − log π_ref over them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import world
from common.files import write_atomic
from models.batching import pad_batch
from models.chat import completion_ids, prompt_ids, user
from models.checkpoint import Manifest, verify
from models.sampling import SamplingParams, sample_answers
from training.common import Dist, batches, cosine_lr, mean_ci95, optimizer_step, save_resume, save_trained, start_run
from training.dpo_config import DPOConfig
from training.evaluate import evaluate_policy, load_policy
from training.losses import dpo_loss, gather_logprobs
from training.pairs import build_pairs

log = logging.getLogger(__name__)

EncodedPair = tuple[list[int], list[int], int]
"""Token ids of prompt + chosen answer, of prompt + rejected answer, and the prompt's length."""

SAMPLES_PER_PROMPT = 4
MAX_NEW_TOKENS = 96


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[world.Pair], max_length: int) -> list[EncodedPair]:
    """Chat-formatted ids of both answers of each pair, truncated to `max_length`."""
    out = []
    for pair in pairs:
        head = prompt_ids(tokenizer, user(pair.prompt))
        chosen = (head + completion_ids(tokenizer, pair.chosen))[:max_length]
        rejected = (head + completion_ids(tokenizer, pair.rejected))[:max_length]
        out.append((chosen, rejected, min(len(head), max_length)))
    return out


def sequence_logps(model: torch.nn.Module, seqs: Sequence[list[int]], heads: Sequence[int],
                   pad_id: int) -> tuple[Tensor, Tensor]:
    """Summed log-probability of each sequence's answer (its tokens after the first `head`), and their count."""
    ids, attention = pad_batch(seqs, pad_id)  # (B, T)
    predicts_answer = torch.arange(ids.shape[1] - 1) >= torch.tensor(list(heads))[:, None] - 1  # (B, T-1)
    answer = (attention[:, 1:].bool() & predicts_answer).float()  # 1 where position t predicts an answer token
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # (B, T-1, V)
    logps = gather_logprobs(logits.float(), ids[:, 1:])  # (B, T-1)
    return (logps * answer).sum(-1), answer.sum(-1)  # (B,), (B,)


def pair_logps(model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int) -> tuple[Tensor, Tensor]:
    """Answer log-probs and token counts of chosen and rejected, (B, 2) each, in one forward pass."""
    seqs = [c for c, _, _ in pairs] + [r for _, r, _ in pairs]
    heads = [h for _, _, h in pairs] * 2
    sums, counts = sequence_logps(model, seqs, heads, pad_id)  # (2B,)
    return sums.view(2, -1).T, counts.view(2, -1).T  # (B, 2)


def dpo_objective(cfg: DPOConfig, logps: Tensor, counts: Tensor, ref_logps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The configured loss from (B, 2) policy and reference log-probs; IPO averages them over answer tokens."""
    if cfg.loss_type == "ipo":
        logps, ref_logps = logps / counts.clamp(min=1), ref_logps / counts.clamp(min=1)
    return dpo_loss(logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1], beta=cfg.beta,
                    loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def reference_logps(reference: torch.nn.Module, data: Sequence[EncodedPair], pad_id: int, dist: Dist,
                    batch_size: int = 32) -> Tensor:
    """Summed answer log-probs (N, 2) of every pair under the reference; each process computes a share."""
    per_rank = -(-len(data) // dist.world_size)
    lo, hi = dist.rank * per_rank, min(len(data), (dist.rank + 1) * per_rank)
    # Length-sorted batches waste little on padding.
    order = sorted(range(lo, hi), key=lambda i: len(data[i][0]) + len(data[i][1]))
    out = torch.zeros(per_rank, 2)
    bar = dist.progress(len(order), 0, "dpo reference log-probs")
    for j in range(0, len(order), batch_size):
        index = order[j : j + batch_size]
        out[torch.tensor(index) - lo] = pair_logps(reference, [data[i] for i in index], pad_id)[0]
        bar.update(len(index))
    bar.close()
    if dist.world_size == 1:
        return out[: len(data)]
    shares = [torch.zeros_like(out) for _ in range(dist.world_size)]
    torch.distributed.all_gather(shares, out)
    return torch.cat(shares)[: len(data)]


def cached_reference_logps(cache: Path, reference: torch.nn.Module, data: Sequence[EncodedPair], pad_id: int,
                           dist: Dist) -> Tensor:
    """`reference_logps`, computed once and stored as safetensors at `cache` (rank 0 writes)."""
    if cache.is_file():
        return load_file(str(cache))["logps"]
    log.info("computing reference log-probs of %d pairs into %s", len(data), cache)
    logps = reference_logps(reference, data, pad_id, dist)
    if dist.is_main:
        write_atomic(cache, safetensors.torch.save({"logps": logps.contiguous()}))
    return logps


@torch.no_grad()
def validate(model: torch.nn.Module, data: Sequence[EncodedPair], ref_logps: Tensor, cfg: DPOConfig, pad_id: int,
             batch_size: int = 32) -> dict[str, float]:
    """The DPO loss and its metrics over all held-out pairs, as `eval/<name>`."""
    model.eval()
    parts = [pair_logps(model, data[i : i + batch_size], pad_id) for i in range(0, len(data), batch_size)]
    model.train()
    logps, counts = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # (N, 2)
    _, metrics = dpo_objective(cfg, logps, counts, ref_logps)
    return {f"eval/{k}": v.item() for k, v in metrics.items()}


@torch.no_grad()
def sampled_kl(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               prompts: Sequence[str], k: int = SAMPLES_PER_PROMPT, seed: int = 0) -> tuple[float, float]:
    """KL(π‖π_ref) with its 95% CI, from `k` answers per prompt sampled from π at temperature 1.

    Each answer's Σ_t log π − log π_ref (the end-of-turn token included when sampled) is an unbiased estimate
    of the sequence-level KL (Schulman's k1, summed over tokens); the mean goes over answers.
    """
    was_training = policy.training
    policy.eval()
    heads = [prompt_ids(tokenizer, user(p)) for p in prompts]
    answers = sample_answers(policy, tokenizer, heads, k, SamplingParams(MAX_NEW_TOKENS, 1.0),
                             generator=torch.Generator().manual_seed(seed))
    per_answer = answer_log_ratios(policy, reference, heads, answers, tokenizer.pad_token_id)
    policy.train(was_training)
    return mean_ci95(per_answer)


@torch.no_grad()
def answer_log_ratios(policy: torch.nn.Module, reference: torch.nn.Module, heads: Sequence[list[int]],
                      answers: Sequence[Sequence[list[int]]], pad_id: int, batch_size: int = 32) -> list[float]:
    """Σ_t log π − log π_ref over the tokens of each answer to each prompt (`heads`' ids), prompt after prompt."""
    seqs = [head + a for head, group in zip(heads, answers, strict=True) for a in group]
    starts = [len(head) for head, group in zip(heads, answers, strict=True) for _ in group]
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        policy_lp, _ = sequence_logps(policy, seqs[i : i + batch_size], starts[i : i + batch_size], pad_id)
        reference_lp, _ = sequence_logps(reference, seqs[i : i + batch_size], starts[i : i + batch_size], pad_id)
        out.extend((policy_lp - reference_lp).tolist())
    return out


def _cache_path(cfg: DPOConfig, version: str, split: str, n_pairs: int, seed: int) -> Path:
    key = f"{version}-{split}-{n_pairs}-{seed}-{cfg.policy_share}-{cfg.annotator_temperature}-{cfg.max_length}"
    return cfg.parent.parent / ".data" / f"ref-logps-{key}.safetensors"


def train_dpo(cfg: DPOConfig) -> Manifest | None:
    """Tune the SFT policy on preference pairs, validate, resume if interrupted, write the checkpoint (rank 0)."""
    run = start_run(cfg.out, cfg.seed)
    dist = run.dist
    parent_version = verify(cfg.parent, kind="policy").version
    train_args = (cfg.parent, "train", cfg.pairs, cfg.seed, cfg.policy_share, cfg.annotator_temperature)
    held_args = (cfg.parent, "test", cfg.eval_pairs, cfg.seed + 1, cfg.policy_share, cfg.annotator_temperature)
    train_pairs, held_pairs = dist.main_first(lambda: (build_pairs(*train_args), build_pairs(*held_args)))
    policy, tokenizer = load_policy(cfg.parent)
    reference, _ = load_policy(cfg.parent)
    reference.requires_grad_(False)
    pad = tokenizer.pad_token_id
    train = encode_pairs(tokenizer, train_pairs, cfg.max_length)
    valid = encode_pairs(tokenizer, held_pairs, cfg.max_length)
    # train_seconds_this_run counts from here: the reference log-probs are DPO's own work; the preference pairs
    # above are data, like the reward model's.
    started = time.time()
    train_ref = cached_reference_logps(_cache_path(cfg, parent_version, "train", cfg.pairs, cfg.seed), reference,
                                       train, pad, dist)
    valid_ref = cached_reference_logps(_cache_path(cfg, parent_version, "test", cfg.eval_pairs, cfg.seed + 1),
                                       reference, valid, pad, dist)
    n_kl_prompts = max(cfg.kl_samples, cfg.val_kl_samples) // SAMPLES_PER_PROMPT
    kl_prompts = [p.text for p in world.prompts("validation", n_kl_prompts, cfg.seed + 2)] if n_kl_prompts else []

    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = run.resume({"model": policy}, optimizer, asdict(cfg) | {"parent_version": parent_version})
    if state.step:
        log.info("resuming DPO at step %d of %d", state.step, cfg.steps)
    policy.train()
    ddp = dist.wrap_ddp(policy)
    bar = dist.progress(cfg.steps, state.step, f"dpo ({cfg.loss_type})")
    for index in batches(len(train), cfg.batch_size, cfg.seed, state.step, cfg.steps):
        lr = cosine_lr(state.step, cfg.steps, cfg.lr, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mine = dist.local_slice(index)
        logps, counts = pair_logps(ddp, [train[i] for i in mine], pad)  # (b, 2)
        loss, metrics = dpo_objective(cfg, logps, counts, train_ref[mine])
        optimizer_step(optimizer, loss, [policy])
        state.step += 1
        record = {"step": state.step, "lr": lr, **{k: dist.all_reduce_mean(v).item() for k, v in metrics.items()}}
        if dist.is_main and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
            record |= validate(policy, valid, valid_ref, cfg, pad)
            if cfg.val_kl_samples:
                n = cfg.val_kl_samples // SAMPLES_PER_PROMPT
                record["objective/kl"] = sampled_kl(policy, reference, tokenizer, kl_prompts[:n],
                                                    seed=cfg.seed + state.step)[0]
            bar.set_postfix(val_loss=f"{record['eval/loss']:.3f}", val_acc=f"{record['eval/rewards/accuracies']:.2f}")
        state.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", margin=f"{record['rewards/margins']:.2f}", refresh=False)
        bar.update(1)
        if dist.is_main and state.step % cfg.save_every == 0 and state.step < cfg.steps:
            save_resume(run.dir, {"model": policy}, optimizer, state)
    bar.close()
    if not dist.is_main:
        return None
    policy.eval()
    figures: dict[str, object] = {k: v for k, v in state.history[-1].items() if k.startswith("eval/")}
    figures["train_seconds_this_run"] = round(time.time() - started, 1)
    if cfg.kl_samples:
        figures["kl_to_sft"], figures["kl_to_sft_ci95"] = sampled_kl(
            policy, reference, tokenizer, kl_prompts[: cfg.kl_samples // SAMPLES_PER_PROMPT], seed=cfg.seed)
        figures["kl_samples"] = cfg.kl_samples // SAMPLES_PER_PROMPT * SAMPLES_PER_PROMPT
    if cfg.eval_prompts:
        # Same prompts and sampling seed for both, as `bon eval policy --split test --seed 0` would use.
        prompts = world.prompts(cfg.eval_split, cfg.eval_prompts, cfg.seed)
        tuned = evaluate_policy(policy, tokenizer, prompts, k=SAMPLES_PER_PROMPT, seed=cfg.seed)
        sft = evaluate_policy(reference, tokenizer, prompts, k=SAMPLES_PER_PROMPT, seed=cfg.seed)
        figures.update({k: tuned[k] for k in ("gold_reward_mean", "gold_reward_ci95", "well_formed_rate",
                                              "flawless_rate", "flaw_rates", "n_answers")})
        figures.update({f"sft_{k}": sft[k] for k in ("gold_reward_mean", "gold_reward_ci95", "well_formed_rate")})
        figures["gold_reward_gain"] = tuned["gold_reward_mean"] - sft["gold_reward_mean"]

    hyper = asdict(cfg) | {"out": str(cfg.out), "parent": str(cfg.parent), "world_size": dist.world_size}
    manifest = save_trained(cfg.out, policy, tokenizer, state.history, kind="policy", method="dpo",
                            parent=parent_version, hyperparameters=hyper, figures=figures)
    save_resume(run.dir, {"model": policy}, optimizer, state)
    return manifest
