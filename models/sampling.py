"""Batched sampling from a Hugging Face causal LM with one prefill per prompt shared by its N samples.

`generate(num_return_sequences=N)` would prefill the prompt N times. Here the prompt is prefilled once, its KV
cache is repeated N times, and finished rows leave the batch, so Best-of-N pays for one prompt and N decodes.
The decode loop is ours so that the caller can cancel between steps (a client that went away) and seed each
request on its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from models.batching import pad_batch, position_ids
from models.interface import Cancelled

# transformers 5.24 renames `past_key_values` to `cache`; the GPU image's 5.17 knows only the old name.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

FinishReason = Literal["stop", "length"]


@dataclass
class Sample:
    token_ids: list[int]
    finish_reason: FinishReason


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


def _next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0; otherwise temperature and nucleus (top-p) sampling."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature  # (R, V)
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop = cumulative - sorted_logits.softmax(dim=-1) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def sample(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    n: int,
    params: SamplingParams,
    *,
    stop_ids: set[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[list[Sample]]:
    """Sample `n` continuations of each prompt; returns one list of `n` samples per prompt, in order."""
    device = next(model.parameters()).device
    input_ids, attention = pad_batch(prompts, pad_id, left=True, device=device)  # (P, L)
    positions = position_ids(attention)  # (P, L)
    cache = DynamicCache()
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                use_cache=True)
    logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)  # (P*n, V)
    cache.batch_repeat_interleave(n)
    attention = attention.repeat_interleave(n, dim=0)  # (P*n, L)
    next_pos = positions[:, -1].repeat_interleave(n, dim=0) + 1  # (P*n,)

    rows = len(prompts) * n
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finish: list[FinishReason] = ["length"] * rows
    active = torch.arange(rows, device=device)  # which original rows are still in the batch
    for step in range(params.max_new_tokens):
        if cancelled is not None and cancelled():
            raise Cancelled()
        chosen = _next_tokens(logits, params, generator)  # (A,)
        keep = []
        for j, (row, tok) in enumerate(zip(active.tolist(), chosen.tolist(), strict=True)):
            if tok in stop_ids:
                finish[row] = "stop"
            else:
                tokens[row].append(tok)
                keep.append(j)
        if not keep or step == params.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            active, chosen, attention, next_pos = active[index], chosen[index], attention[index], next_pos[index]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
        out = model(input_ids=chosen[:, None], attention_mask=attention, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return [[Sample(tokens[p * n + k], finish[p * n + k]) for k in range(n)] for p in range(len(prompts))]


def sample_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                   k: int, params: SamplingParams, *, generator: torch.Generator | None = None, batch_prompts: int = 16,
                   desc: str | None = None) -> list[list[list[int]]]:
    """`k` answers' token ids per prompt, the end-of-turn token appended to each answer that emitted it.

    `batch_prompts` prompts are sampled together (`sample`), all drawing from `generator`; `desc` names a
    progress bar on stderr.
    """
    eos = tokenizer.eos_token_id
    out: list[list[list[int]]] = []
    starts = range(0, len(prompts), batch_prompts)
    for i in tqdm(starts, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=desc is None):
        groups = sample(model, prompts[i : i + batch_prompts], k, params, stop_ids={eos},
                        pad_id=tokenizer.pad_token_id, generator=generator)
        out.extend([s.token_ids + [eos] if s.finish_reason == "stop" else s.token_ids for s in group]
                   for group in groups)
    return out
