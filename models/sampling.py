"""Batched sampling from a Hugging Face causal LM: one prefill per prompt shared by its N samples, and one decode
loop shared by every request in flight (continuous batching).

`generate(num_return_sequences=N)` would prefill the prompt N times. Here each prompt is prefilled once, its KV
cache is repeated N times, and finished rows leave the batch, so Best-of-N pays for one prompt and N decodes.

`Decoder` holds the rows of many jobs in one batch. A job joins between two decode steps (its prompts prefilled
together, their cache rows left-padded to the batch's width and appended) and leaves when its last row is done,
so concurrent requests share every decode step instead of waiting for the model in turn. Each job keeps its own
sampling parameters, random generator, cancellation and early rejection. Same seed, same samples, as long as the
batch holds the same jobs: a batched matrix product may round differently in the last bit when the batch changes
shape, as in every continuous-batching engine. `sample` runs one job to its end in the calling thread (training
and evaluation); the hf policy backend runs a `Decoder` on a thread of its own for all of its requests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from models.batching import pad_batch, position_ids
from models.interface import SAMPLING_EPS, Cancelled

# transformers 5.24 renames `past_key_values` to `cache`; the GPU image's 5.17 knows only the old name.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

FinishReason = Literal["stop", "length", "rejected"]


@dataclass
class Sample:
    token_ids: list[int]
    finish_reason: FinishReason
    """"rejected": cut by early rejection before it finished (its tokens are those generated until then)."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


Judge = Callable[[list[list[int]]], "Future[list[int]]"]
"""Early rejection's verdict on a job's partial samples (every row's token ids so far, in row order): a future of
the rows to keep. The decoder keeps decoding while it is pending, so scoring hides behind decoding."""


@dataclass(frozen=True)
class Rejection:
    after_tokens: int
    """The verdict is asked for once every unfinished row of the job has this many tokens."""
    judge: Judge


class Job:
    """`n` samples of each of `prompts`, with one set of parameters, one random generator and one cancellation."""

    def __init__(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams, *, stop_ids: set[int],
                 generator: torch.Generator | None = None, cancelled: Callable[[], bool] | None = None,
                 rejection: Rejection | None = None):
        self.prompts = [list(p) for p in prompts]
        self.n = n
        self.params = params
        self.stop_ids = stop_ids
        self.generator = generator
        self.cancelled = cancelled
        self.rejection = rejection
        self.tokens: list[list[int]] = [[] for _ in range(len(self.prompts) * n)]
        self.finish: list[FinishReason | None] = [None] * len(self.tokens)
        self.verdict: Future[list[int]] | None = None
        self.done: Future[list[list[Sample]]] = Future()
        """The samples, one list of `n` per prompt in order; or the exception that ended the job."""

    @property
    def generated(self) -> int:
        """Tokens sampled so far, over all rows (what the job cost, whether or not it finishes)."""
        return sum(len(t) for t in self.tokens)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.verdict is not None:
            self.verdict.cancel()

    def _record(self, row: int, token: int) -> None:
        if token in self.stop_ids:
            self.finish[row] = "stop"
            return
        self.tokens[row].append(token)
        if len(self.tokens[row]) >= self.params.max_new_tokens:
            self.finish[row] = "length"

    def _review(self) -> None:
        """Ask for the early-rejection verdict when it is due; apply it once it has come."""
        if self.rejection is None:
            return
        if self.verdict is None:
            due = self.rejection.after_tokens
            if any(f is None and len(t) < due for f, t in zip(self.finish, self.tokens, strict=True)):
                return
            self.verdict = self.rejection.judge([list(t) for t in self.tokens])
        if self.verdict.done():
            kept = set(self.verdict.result())
            self.finish = [f if row in kept else "rejected" for row, f in enumerate(self.finish)]
            self.rejection = None

    @property
    def parked(self) -> bool:
        """Every row has finished, and the early-rejection verdict they all wait for has not come yet."""
        return all(f is not None for f in self.finish) and self.rejection is not None and not self.done.done()

    def _settle(self) -> None:
        """Finish the job once every row has finished and the verdict, if one is asked for, applied (the verdict
        decides which candidates are kept whether or not they finished first: only the cost depends on timing)."""
        if not self.done.done() and all(f is not None for f in self.finish) and self.rejection is None:
            n = self.n
            self.done.set_result([[Sample(self.tokens[p * n + k], self.finish[p * n + k] or "length")
                                   for k in range(n)] for p in range(len(self.prompts))])


def _next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0 (below `SAMPLING_EPS`); otherwise temperature and nucleus (top-p) sampling, which
    always keeps each row's top token."""
    if params.temperature < SAMPLING_EPS:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature  # (R, V)
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop = cumulative - sorted_logits.softmax(dim=-1) >= params.top_p
        drop[:, 0] = False  # even where top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Inverse-CDF sampling: one uniform draw per row against the cumulative probabilities. torch.multinomial draws
    # an exponential per vocabulary entry: 6.6 ms against 0.29 ms for 64 rows of this vocabulary, a fifth of a step.
    cumulative = logits.softmax(dim=-1).cumsum(dim=-1)  # (R, V)
    total = cumulative[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=logits.device, dtype=total.dtype) * total
    # The first entry whose cumulative mass passes u: never a token of probability 0 (its mass equals the one
    # before it); u is kept under the total, so the last token with any mass is the furthest it reaches.
    return torch.searchsorted(cumulative, torch.minimum(u, total.nextafter(torch.zeros_like(total))),
                              right=True).squeeze(-1)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` padded with zeros at the start of `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


class Decoder:
    """The rows of every job in flight as one batch: `admit` prefills new jobs, `step` decodes one token for all.

    Not thread-safe: one thread drives it (the hf backend's engine thread, or `sample` in its caller).
    """

    def __init__(self, model: PreTrainedModel, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.parked: list[Job] = []
        """Jobs whose rows have all finished, waiting for their early-rejection verdict."""
        self._reset()

    def _reset(self) -> None:
        """An empty batch."""
        self._rows: list[tuple[Job, int]] = []  # (job, row within the job), in batch order
        self._cache = DynamicCache()
        self._attention = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # (R, L)
        self._next_pos = torch.zeros(0, dtype=torch.long, device=self.device)  # (R,)
        self._logits = torch.zeros(0, device=self.device)  # (R, V): each row's next-token logits

    @property
    def rows(self) -> int:
        return len(self._rows)

    def has_work(self) -> bool:
        """Rows to decode, or a parked job whose verdict has come."""
        return bool(self._rows) or any(job.verdict is not None and job.verdict.done() for job in self.parked)

    def jobs(self) -> list[Job]:
        """The jobs in the batch, in the order they joined."""
        return list(dict.fromkeys(job for job, _ in self._rows))

    @torch.inference_mode()
    def admit(self, jobs: Sequence[Job]) -> None:
        """Prefill the prompts of `jobs` in one forward pass and add their rows to the batch. A job cancelled
        before its prefill fails (`Cancelled`) without costing one."""
        live = []
        for job in jobs:
            if job.cancelled is not None and job.cancelled():
                job.fail(Cancelled(tokens=0))
            else:
                live.append(job)
        if not live:
            return
        prompts = [p for job in live for p in job.prompts]
        input_ids, attention = pad_batch(prompts, self.pad_id, left=True, device=self.device)  # (P, L)
        positions = position_ids(attention)  # (P, L)
        cache = DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        repeats = torch.tensor([job.n for job in live for _ in job.prompts], device=self.device)
        index = torch.arange(len(prompts), device=self.device).repeat_interleave(repeats)  # (R_new,)
        cache.batch_select_indices(index)
        logits = out.logits[:, -1, :][index]  # (R_new, V)
        rows = [(job, r) for job in live for r in range(len(job.tokens))]
        if not self._rows:
            self._cache, self._attention, self._logits = cache, attention[index], logits
            self._next_pos = positions[:, -1][index] + 1
            self._rows = rows
            return
        # Both caches left-padded to one width: positions are explicit per row, and the mask hides the padding.
        width = max(self._attention.shape[1], attention.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self._attention = torch.cat([_left_pad(self._attention, width, -1), _left_pad(attention[index], width, -1)])
        self._next_pos = torch.cat([self._next_pos, positions[:, -1][index] + 1])
        self._logits = torch.cat([self._logits, logits])
        self._rows += rows

    @torch.inference_mode()
    def step(self) -> None:
        """Sample each row's next token; retire the rows that finished, were rejected or whose job was cancelled,
        settle the jobs that are done; then one decode step for the rows left."""
        jobs = self.jobs() + self.parked
        for job in jobs:
            if job.cancelled is not None and job.cancelled():
                job.fail(Cancelled(tokens=job.generated))
        chosen = torch.zeros(len(self._rows), dtype=torch.long, device=self.device)  # (R,)
        for job in jobs:
            at = [i for i, (j, _) in enumerate(self._rows) if j is job]
            if job.done.done() or not at:
                continue
            index = torch.tensor(at, device=self.device)
            logits = self._logits if len(at) == len(self._rows) else self._logits[index]
            chosen[index] = _next_tokens(logits, job.params, job.generator)
        for (job, row), token in zip(self._rows, chosen.tolist(), strict=True):
            if not job.done.done():
                job._record(row, token)
        for job in jobs:
            if not job.done.done():
                try:
                    job._review()
                except Exception as exc:  # the judge failed: its job fails, the others go on
                    job.fail(exc)
                    continue
                job._settle()
        self.parked = [job for job in jobs if job.parked]
        keep = [i for i, (job, row) in enumerate(self._rows) if not job.done.done() and job.finish[row] is None]
        if not keep:
            self._reset()
            return
        if len(keep) < len(self._rows):
            index = torch.tensor(keep, device=self.device)
            self._cache.batch_select_indices(index)
            self._attention, self._next_pos, chosen = self._attention[index], self._next_pos[index], chosen[index]
            self._rows = [self._rows[i] for i in keep]
            self._trim()
        self._attention = torch.cat([self._attention, self._attention.new_ones((len(self._rows), 1))], dim=-1)
        out = self.model(input_ids=chosen[:, None], attention_mask=self._attention,
                         position_ids=self._next_pos[:, None], past_key_values=self._cache, use_cache=True)
        self._logits = out.logits[:, -1, :]  # (R, V)
        self._next_pos = self._next_pos + 1

    def fail_all(self, exc: BaseException) -> None:
        """End every job in the batch with `exc` and empty it (the model itself failed)."""
        for job in self.jobs() + self.parked:
            job.fail(exc)
        self.parked = []
        self._reset()

    def _trim(self) -> None:
        """Drop the leading columns that no row attends to any more (padding left by rows that have gone)."""
        first = int(self._attention.any(dim=0).int().argmax())
        if first == 0:
            return
        self._attention = self._attention[:, first:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:, :], layer.values[:, :, first:, :]


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
    job = Job(prompts, n, params, stop_ids=stop_ids, generator=generator, cancelled=cancelled)
    decoder = Decoder(model, pad_id)
    decoder.admit([job])
    while decoder.rows:
        decoder.step()
    return job.done.result()


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
