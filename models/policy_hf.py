"""The transformers policy backend: one prefill per prompt, its KV cache shared by the N samples.

Generation runs on one thread per model (`models.sampling.sample` holds the whole decode loop), so the event
loop stays free and requests to one model queue in order; the sampler checks `cancelled` between decode steps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.chat import prompt_ids
from models.checkpoint import CheckpointError
from models.interface import (
    Candidate,
    Generation,
    GenerationParams,
    Message,
    PolicySpec,
    cut_at_stop,
    resolve_device,
    verified_copy,
)
from models.sampling import SamplingParams, sample


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


class HFPolicy:
    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, version: str):
        if tokenizer.chat_template is None:
            raise CheckpointError(f"policy {name}: the tokenizer has no chat template")
        self.name = name
        self.version = version
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self._stop_ids = _stop_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id: int = pad
        self._device = next(model.parameters()).device
        # Fast tokenizers are not safe to call from two threads at once (event loop and generation thread).
        self._tokenizer_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"policy-{name}")
        self._running = 0

    @classmethod
    def load(cls, spec: PolicySpec) -> HFPolicy:
        if spec.path is None:
            raise CheckpointError(f"policy {spec.name}: the hf backend needs a checkpoint path")
        device = resolve_device(spec.options.get("device", "cpu"))
        dtype = torch.float32 if device == "cpu" else "auto"
        with verified_copy(spec.path, "policy", spec.options.get("allow_unverified", False)) as (source, version):
            model = AutoModelForCausalLM.from_pretrained(str(source), use_safetensors=True, trust_remote_code=False,
                                                         dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, local_files_only=True)
        return cls(spec.name, model.to(device), tokenizer, version)

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        with self._tokenizer_lock:
            return prompt_ids(self.tokenizer, messages)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_ids(messages))

    async def generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                       cancelled: Callable[[], bool]) -> Generation:
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            return await loop.run_in_executor(self._executor, self._generate, messages, n, params, seed, cancelled)
        finally:
            self._running -= 1

    def requests_running(self) -> int:
        return self._running

    def _generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                  cancelled: Callable[[], bool]) -> Generation:
        ids = self._prompt_ids(messages)
        generator = torch.Generator(device=self._device).manual_seed(seed)
        sampling = SamplingParams(max_new_tokens=params.max_tokens, temperature=params.temperature,
                                  top_p=params.top_p)
        stop_ids = set() if params.ignore_eos else self._stop_ids
        samples = sample(self.model, [ids], n, sampling, stop_ids=stop_ids, pad_id=self._pad_id,
                         generator=generator, cancelled=cancelled)[0]
        candidates = []
        with self._tokenizer_lock:
            for s in samples:
                # Cut at a stop string in the text as generated, then strip: as vLLM does.
                text, stopped = cut_at_stop(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), params.stop)
                candidates.append(Candidate(text.strip(), len(s.token_ids), "stop" if stopped else s.finish_reason))
        return Generation(candidates, len(ids))

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
