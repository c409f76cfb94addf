"""The transformers policy backend: one prefill per prompt, its KV cache shared by the N samples, and one decode
loop per model that every request in flight shares (continuous batching, `models.sampling.Decoder`).

The decode loop runs on a thread of its own (`_Engine`), so the event loop stays free: a request's job joins the
running batch between two decode steps and its rows leave as they finish; the decoder checks each job's
`cancelled` between steps and before its prefill.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.chat import prompt_ids
from models.checkpoint import CheckpointError
from models.interface import (
    BackendError,
    Candidate,
    EarlyRejection,
    Finished,
    Generation,
    GenerationParams,
    Message,
    PolicySpec,
    best_rows,
    cut_at_stop,
    resolve_device,
    verified_copy,
)
from models.sampling import Decoder, Job, Judge, Rejection, Sample, SamplingParams

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 256
"""Rows (candidates of all requests together) one decode step takes; a job that would pass it waits for room,
in arrival order. One job larger than this still runs, alone."""


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


class _Engine:
    """A `Decoder` driven by a thread of its own: jobs submitted from any thread join its batch between steps."""

    def __init__(self, decoder: Decoder, name: str, max_rows: int = MAX_BATCH_ROWS):
        self._decoder = decoder
        self._max_rows = max_rows
        self._pending: list[Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"policy-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._closed:
                job.fail(BackendError("the policy was closed", "policy"))
                return
            self._pending.append(job)
            self._wake.notify()

    def wake(self) -> None:
        """Look again for work (an early-rejection verdict has come)."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _take(self) -> list[Job] | None:
        """The waiting jobs that fit beside the batch, in arrival order; blocks while there is nothing to do, and
        returns None once closed."""
        with self._wake:
            while not self._pending and not self._decoder.has_work() and not self._closed:
                self._wake.wait()
            if self._closed:
                for job in self._pending:
                    job.fail(BackendError("the policy was closed", "policy"))
                return None
            rows, taken = self._decoder.rows, []
            while self._pending:
                need = len(self._pending[0].tokens)
                if rows and rows + need > self._max_rows:
                    break
                taken.append(self._pending.pop(0))
                rows += need
            return taken

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                self._decoder.admit(jobs)
                if self._decoder.has_work():
                    self._decoder.step()
            except Exception as exc:  # the model itself failed: every job in the batch fails with it, not the thread
                log.exception("the policy's decode step failed")
                for job in jobs:
                    job.fail(exc)
                self._decoder.fail_all(exc)
        self._decoder.fail_all(BackendError("the policy was closed", "policy"))


class HFPolicy:
    supports_early_rejection = True

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
        self._device = next(model.parameters()).device
        # Fast tokenizers are not safe to call from two threads at once (the engine thread and the workers).
        self._tokenizer_lock = threading.Lock()
        self._engine = _Engine(Decoder(self.model, pad), name)
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
                       cancelled: Callable[[], bool], rejection: EarlyRejection | None = None,
                       finished: Finished | None = None) -> Generation:
        # `finished` is never called: the reward model and this loop share the CPU's cores, so scoring the
        # candidates one by one while others decode would slow the decoding as much as it hides.
        self._running += 1
        try:
            ids = await asyncio.to_thread(self._prompt_ids, messages)
            sampling = SamplingParams(max_new_tokens=params.max_tokens, temperature=params.temperature,
                                      top_p=params.top_p)
            judge = None if rejection is None else Rejection(rejection.after_tokens,
                                                             self._judge(rejection, asyncio.get_running_loop()))
            job = Job([ids], n, sampling, stop_ids=set() if params.ignore_eos else self._stop_ids,
                      generator=torch.Generator(device=self._device).manual_seed(seed), cancelled=cancelled,
                      rejection=judge)
            self._engine.submit(job)
            (samples,) = await asyncio.wrap_future(job.done)
            return await asyncio.to_thread(self._generation, samples, params, len(ids))
        finally:
            self._running -= 1

    def requests_running(self) -> int:
        return self._running

    def _decode(self, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _judge(self, rejection: EarlyRejection, loop: asyncio.AbstractEventLoop) -> Judge:
        """The decoder's judge: the partial answers as text, scored on the event loop (the server's reward
        batcher), the best `rejection.keep` kept."""

        def judge(partials: list[list[int]]) -> Future[list[int]]:
            texts = [self._decode(t).strip() for t in partials]

            async def verdict() -> list[int]:
                return best_rows(await rejection.score(texts), rejection.keep)

            future = asyncio.run_coroutine_threadsafe(verdict(), loop)
            future.add_done_callback(lambda _: self._engine.wake())
            return future

        return judge

    def _generation(self, samples: list[Sample], params: GenerationParams, prompt_tokens: int) -> Generation:
        candidates, rejected = [], []
        for s in samples:
            if s.finish_reason == "rejected":
                rejected.append(len(s.token_ids))
                continue
            # Cut at a stop string in the text as generated, then strip: as vLLM does.
            text, stopped = cut_at_stop(self._decode(s.token_ids), params.stop)
            candidates.append(Candidate(text.strip(), len(s.token_ids), "stop" if stopped else s.finish_reason))
        return Generation(candidates, prompt_tokens, rejected)

    async def close(self) -> None:
        self._engine.close()
