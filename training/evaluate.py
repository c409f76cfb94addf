"""Gold-judge evaluation of a policy: sample K answers per held-out prompt, score them as the annotator would.

It lives in training/, not evaluation/: every trainer reports its held-out gold reward with it, and the pair
builder samples with it, while training/ may not import evaluation/ (evaluation/ builds on training/).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import world
from models.chat import prompt_ids, user
from models.checkpoint import verify
from models.sampling import SamplingParams, sample_answers
from training.common import mean_ci95


def load_policy(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A verified policy checkpoint, in eval mode on the CPU."""
    verify(path, kind="policy")
    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False,
                                                 local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)


def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], k: int,
                     params: SamplingParams, seed: int = 0, batch_prompts: int = 16) -> list[list[str]]:
    """K sampled answers per prompt, decoded; deterministic given `seed`. Shows progress on stderr."""
    heads = [prompt_ids(tokenizer, user(p)) for p in prompts]
    answers = sample_answers(model, tokenizer, heads, k, params, generator=torch.Generator().manual_seed(seed),
                             batch_prompts=batch_prompts, desc=f"sampling {k} x {len(prompts)}")
    return [[decode_answer(tokenizer, a) for a in group] for group in answers]


def decode_answer(tokenizer: PreTrainedTokenizerBase, answer: Sequence[int]) -> str:
    """An answer's text as the judge and the reward model read it: special tokens (end of turn) dropped, stripped."""
    return tokenizer.decode(answer, skip_special_tokens=True).strip()


def judge_answers(prompts: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean gold reward with a 95% CI over prompts (answers to one prompt are not independent), flaw rates."""
    per_prompt, flat, formed = [], [], []
    flaw_counts = dict.fromkeys(world.FLAWS, 0)
    flawless = 0
    for prompt, group in zip(prompts, answers, strict=True):
        scores = [world.score(prompt, a) for a in group]
        per_prompt.append(sum(scores) / len(scores))
        flat.extend(scores)
        for a in group:
            formed.append(world.well_formed(prompt, a))
            found = world.detect(prompt, a)
            flawless += not any(found.values())
            for flaw, present in found.items():
                flaw_counts[flaw] += int(present)
    mean, ci = mean_ci95(per_prompt)
    n = len(flat)
    return {
        "gold_reward_mean": mean,
        "gold_reward_ci95": ci,
        "well_formed_rate": sum(formed) / n,
        "flawless_rate": flawless / n,
        "flaw_rates": {f: c / n for f, c in flaw_counts.items()},
        "n_prompts": len(prompts),
        "n_answers": n,
    }


def evaluate_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[world.Prompt],
                    k: int = 4, temperature: float = 1.0, max_new_tokens: int = 96, seed: int = 0) -> dict[str, Any]:
    texts = [p.text for p in prompts]
    answers = generate_answers(model, tokenizer, texts, k, SamplingParams(max_new_tokens, temperature), seed)
    report = judge_answers(texts, answers)
    report["samples_per_prompt"] = k
    report["temperature"] = temperature
    report["examples"] = [{"prompt": p, "answer": a[0]} for p, a in zip(texts[:5], answers[:5], strict=True)]
    return report
