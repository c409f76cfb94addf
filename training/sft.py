"""Supervised fine-tuning of a tiny Llama policy, from scratch, on chat examples of the embedded world.

About a third of the answers it learns from are flawed (dismissive, wrong, rude, rambling...), so the policy
misbehaves at a clear rate, as SFT models do: the gap that Best-of-N, DPO and PPO then close. The loss falls on
assistant tokens only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

import world
from models.batching import pad_batch
from models.chat import completion_ids, prompt_ids, user
from models.checkpoint import Manifest
from training.common import Run, batches, cosine_lr, optimizer_step, save_resume, save_trained, start_run
from training.evaluate import evaluate_policy
from training.sft_config import ModelShape, SFTConfig
from training.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

Encoded = tuple[list[int], int]
"""Token ids of one example and the length of its prompt (the part without loss)."""


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerBase:
    return train_tokenizer(world.corpus(20_000, seed), vocab_size=vocab_size)


def build_policy(shape: ModelShape, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                    max_length: int) -> list[Encoded]:
    """(prompt, answer) texts to chat-formatted ids, truncated to `max_length`."""
    out = []
    for prompt, answer in pairs:
        head = prompt_ids(tokenizer, user(prompt))
        ids = (head + completion_ids(tokenizer, answer))[:max_length]
        out.append((ids, len(head)))
    return out


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on prompt and padding so only answer tokens carry loss."""
    input_ids, attention = pad_batch([ids for ids, _ in examples], pad_id)  # (B, T)
    heads = torch.tensor([head for _, head in examples])  # (B,)
    prompt = torch.arange(input_ids.shape[1]) < heads[:, None]  # (B, T)
    labels = input_ids.masked_fill((attention == 0) | prompt, -100)  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over labelled positions, and how many there were."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return nll, (targets != -100).sum()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: Sequence[Encoded], pad_id: int, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        nll, n = token_nll(model, collate(data[i : i + batch_size], pad_id))
        total, count = total + nll.item(), count + n.item()
    model.train()
    return total / max(count, 1)


def _load_or_build_tokenizer(cfg: SFTConfig, run: Run) -> PreTrainedTokenizerBase:
    """The tokenizer is trained once per run and kept with the resume state, so a resumed run reuses it."""
    tok_dir = run.dir.parent / f"{run.dir.name}-tokenizer"

    def load() -> PreTrainedTokenizerBase:
        if not (tok_dir / "tokenizer.json").is_file():
            build_tokenizer(cfg.model.vocab_size, cfg.seed).save_pretrained(str(tok_dir))
        return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)

    return run.dist.main_first(load)


def train_sft(cfg: SFTConfig) -> Manifest | None:
    """Train, validate, resume if interrupted, and write the checkpoint. Returns its manifest on rank 0."""
    run = start_run(cfg.out, cfg.seed)
    dist = run.dist
    tokenizer = _load_or_build_tokenizer(cfg, run)
    model = build_policy(cfg.model, tokenizer)
    pairs = [(p.text, r.text) for p, r in world.sft_examples("train", cfg.train_examples, cfg.seed, cfg.flaw_rate)]
    train = encode_examples(tokenizer, pairs, cfg.max_length)
    held = world.sft_examples("validation", cfg.validation_examples, cfg.seed + 1, cfg.flaw_rate)
    valid = encode_examples(tokenizer, [(p.text, r.text) for p, r in held], cfg.max_length)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state = run.resume({"model": model}, optimizer, cfg)
    if state.step:
        log.info("resuming SFT at step %d of %d", state.step, cfg.steps)
    ddp = dist.wrap_ddp(model)
    bar = dist.progress(cfg.steps, state.step, "sft")
    started = time.time()
    for index in batches(len(train), cfg.batch_size, cfg.seed, state.step, cfg.steps):
        step = state.step
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        mine = collate([train[i] for i in dist.local_slice(index)], tokenizer.pad_token_id)
        nll, count = token_nll(ddp, mine)
        # Normalise by the global token count so K processes take exactly the step one process would.
        global_count = dist.all_reduce_mean(count.float()) * dist.world_size
        loss = nll * dist.world_size / global_count
        optimizer_step(optimizer, loss, [model])
        state.step += 1
        record = {"step": state.step, "loss": dist.all_reduce_mean(loss.detach()).item()}
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            record["validation_loss"] = validation_loss(model, valid, tokenizer.pad_token_id)
            bar.set_postfix(val=f"{record['validation_loss']:.3f}")
        state.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        bar.update(1)
        if dist.is_main and (state.step % cfg.save_every == 0 and state.step < cfg.steps):
            save_resume(run.dir, {"model": model}, optimizer, state)
    bar.close()
    if not dist.is_main:
        return None
    figures = {"validation_loss": validation_loss(model, valid, tokenizer.pad_token_id),
               "train_seconds_this_run": round(time.time() - started, 1)}
    if cfg.eval_prompts:
        report = evaluate_policy(model, tokenizer, world.prompts("validation", cfg.eval_prompts, cfg.seed + 2), k=4)
        figures.update({k: report[k] for k in ("gold_reward_mean", "gold_reward_ci95", "well_formed_rate")})

    hyper = asdict(cfg) | {"out": str(cfg.out), "world_size": dist.world_size}
    manifest = save_trained(cfg.out, model, tokenizer, state.history, kind="policy", method="sft", parent=None,
                            hyperparameters=hyper, figures=figures)
    save_resume(run.dir, {"model": model}, optimizer, state)
    return manifest
