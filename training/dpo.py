"""Direct Preference Optimization of the SFT policy against a frozen copy of itself (DPO, or IPO).

The reference's log-probabilities of every pair are computed once, before training, and cached beside the pairs
(`<root>/.data/`), so the reference never runs inside the training loop and a resumed or repeated run reuses them.
The KL to the reference is measured the honest way: sample answers from the tuned policy on held-out prompts and
average Σ_t log π_θ − log π_ref over them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import world
from models.chat import completion_ids, prompt_ids, user
from models.checkpoint import Manifest, verify
from models.sampling import SamplingParams, sample
from training.common import (
    Dist,
    RunState,
    all_reduce_mean,
    batches,
    config_fingerprint,
    cosine_lr,
    init_distributed,
    load_resume,
    local_slice,
    mean_ci95,
    progress,
    run_dir_for,
    save_resume,
    save_trained,
    set_seed,
    wrap_ddp,
)
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
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    answer = torch.zeros((len(seqs), width - 1))  # 1 where position t predicts an answer token
    for i, (s, head) in enumerate(zip(seqs, heads, strict=True)):
        ids[i, : len(s)], attention[i, : len(s)] = torch.tensor(s), 1
        answer[i, head - 1 : len(s) - 1] = 1
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
    bar = progress(len(order), 0, "dpo reference log-probs", dist)
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
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        os.close(fd)
        save_file({"logps": logps.contiguous()}, tmp)
        os.replace(tmp, cache)
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
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    generator = torch.Generator().manual_seed(seed)
    seqs, heads = [], []
    for i in range(0, len(prompts), 16):
        chunk = [prompt_ids(tokenizer, user(p)) for p in prompts[i : i + 16]]
        groups = sample(policy, chunk, k, SamplingParams(MAX_NEW_TOKENS, 1.0), stop_ids={eos}, pad_id=pad,
                        generator=generator)
        for head, group in zip(chunk, groups, strict=True):
            for s in group:
                seqs.append(head + s.token_ids + ([eos] if s.finish_reason == "stop" else []))
                heads.append(len(head))
    per_answer: list[float] = []
    for i in range(0, len(seqs), 32):
        policy_lp, _ = sequence_logps(policy, seqs[i : i + 32], heads[i : i + 32], pad)
        reference_lp, _ = sequence_logps(reference, seqs[i : i + 32], heads[i : i + 32], pad)
        per_answer.extend((policy_lp - reference_lp).tolist())
    policy.train(was_training)
    return mean_ci95(per_answer)


def _cache_path(cfg: DPOConfig, version: str, split: str, n_pairs: int, seed: int) -> Path:
    key = f"{version}-{split}-{n_pairs}-{seed}-{cfg.policy_share}-{cfg.annotator_temperature}-{cfg.max_length}"
    return cfg.parent.parent / ".data" / f"ref-logps-{key}.safetensors"


def train_dpo(cfg: DPOConfig) -> Manifest | None:
    """Tune the SFT policy on preference pairs, validate, resume if interrupted, write the checkpoint (rank 0)."""
    dist = init_distributed()
    set_seed(cfg.seed)
    parent_version = verify(cfg.parent, kind="policy").version
    train_args = (cfg.parent, "train", cfg.pairs, cfg.seed, cfg.policy_share, cfg.annotator_temperature)
    held_args = (cfg.parent, "test", cfg.eval_pairs, cfg.seed + 1, cfg.policy_share, cfg.annotator_temperature)
    if dist.is_main:
        build_pairs(*train_args)
        build_pairs(*held_args)
    if dist.world_size > 1:
        torch.distributed.barrier()
    policy, tokenizer = load_policy(cfg.parent)
    reference, _ = load_policy(cfg.parent)
    reference.requires_grad_(False)
    pad = tokenizer.pad_token_id
    train = encode_pairs(tokenizer, build_pairs(*train_args), cfg.max_length)
    valid = encode_pairs(tokenizer, build_pairs(*held_args), cfg.max_length)
    train_ref = cached_reference_logps(_cache_path(cfg, parent_version, "train", cfg.pairs, cfg.seed), reference,
                                       train, pad, dist)
    valid_ref = cached_reference_logps(_cache_path(cfg, parent_version, "test", cfg.eval_pairs, cfg.seed + 1),
                                       reference, valid, pad, dist)
    n_kl_prompts = max(cfg.kl_samples, cfg.val_kl_samples) // SAMPLES_PER_PROMPT
    kl_prompts = [p.text for p in world.prompts("validation", n_kl_prompts, cfg.seed + 2)] if n_kl_prompts else []

    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    run_dir = run_dir_for(cfg.out)
    fingerprint = config_fingerprint(asdict(cfg) | {"parent_version": parent_version})
    state = load_resume(run_dir, {"model": policy}, optimizer, fingerprint) or RunState(extra={"config": fingerprint})
    if state.step:
        log.info("resuming DPO at step %d of %d", state.step, cfg.steps)
    policy.train()
    ddp = wrap_ddp(policy, dist)
    bar = progress(cfg.steps, state.step, f"dpo ({cfg.loss_type})", dist)
    started = time.time()
    for index in batches(len(train), cfg.batch_size, cfg.seed, state.step, cfg.steps):
        lr = cosine_lr(state.step, cfg.steps, cfg.lr, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mine = local_slice(index, dist)
        logps, counts = pair_logps(ddp, [train[i] for i in mine], pad)  # (b, 2)
        loss, metrics = dpo_objective(cfg, logps, counts, train_ref[mine])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        record = {"step": state.step, "lr": lr, **{k: all_reduce_mean(v, dist).item() for k, v in metrics.items()}}
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
            save_resume(run_dir, {"model": policy}, optimizer, state)
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
    save_resume(run_dir, {"model": policy}, optimizer, state)
    return manifest
