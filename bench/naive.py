"""Target (a): Best-of-N as a user writes it with transformers, the baseline of the speedup.

N `model.generate` calls, one candidate each (do_sample at the benchmark's temperature), then one forward pass
of the reward model (`AutoModelForSequenceClassification`) per candidate; picking the highest reward then costs
nothing worth timing. Nothing of bon's is used: transformers' Auto classes read the checkpoints and their own
chat templates render the prompts. `min_new_tokens` equal to `max_new_tokens` is transformers' way to sample
past the end of sequence, so every candidate is as long as the other targets' `ignore_eos` ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from bench.stats import Timing

Messages = Sequence[dict[str, str]]


class NaiveBestOfN:
    def __init__(self, policy: Path, rm: Path, max_tokens: int, temperature: float):
        self.tokenizer = AutoTokenizer.from_pretrained(str(policy))
        self.model = AutoModelForCausalLM.from_pretrained(str(policy)).eval()
        self.rm_tokenizer = AutoTokenizer.from_pretrained(str(rm))
        self.rm = AutoModelForSequenceClassification.from_pretrained(str(rm)).eval()
        self.max_tokens = max_tokens
        self.temperature = temperature

    def __call__(self, messages: Messages, n: int, seed: int) -> Timing:
        """One Best-of-N answer to `messages`, timed: sampling and scoring."""
        torch.manual_seed(seed)
        started = time.perf_counter()
        inputs = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        prompt_length = inputs["input_ids"].shape[1]
        answers, tokens = [], 0
        for _ in range(n):
            out = self.model.generate(**inputs, do_sample=True, temperature=self.temperature,
                                      max_new_tokens=self.max_tokens, min_new_tokens=self.max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
            tokens += out.shape[1] - prompt_length
            answers.append(self.tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True))
        sampled = time.perf_counter()
        rewards = []
        for answer in answers:
            scored = self.rm_tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}],
                                                           return_tensors="pt", return_dict=True)
            with torch.no_grad():
                rewards.append(self.rm(**scored).logits[0, 0].item())
        done = time.perf_counter()
        return Timing(latency_s=done - started, sample_s=sampled - started, score_s=done - sampled, tokens=tokens)
