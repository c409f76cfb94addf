"""The two interfaces the server drives: a policy that samples N candidates, a reward model that scores them.

This module holds what every backend and the server share (the types, the two protocols, errors, specs and a
few helpers) and imports no backend. Implementations live beside it (`policy_hf`, `policy_vllm`,
`policy_openai`, `reward_hf`, `reward_remote`, `reward_judge`); `models.loader` maps a backend name to its
class and imports only the one chosen, so a CPU machine never imports vLLM. Blocking model calls run off the
event loop: policies expose `async generate`, reward models a synchronous `score_batch` that the server's
micro-batcher calls in a worker thread (for Best-of-N scoring and for `/classify` alike).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from models.checkpoint import MANIFEST, CheckpointError, Kind, verify

log = logging.getLogger(__name__)

Message = dict[str, Any]
FinishReason = Literal["stop", "length"]
ScoreItem = tuple[Sequence[Message], str]
"""What a reward model scores: the conversation so far and one candidate answer to it."""
Activation = Literal["sigmoid", "identity"]
"""What vLLM's `/classify` applies to a one-label model's raw score unless the request says `use_activation: false`."""
Role = Literal["policy", "reward"]
"""Which of the two a backend is, as errors name it to the client."""

SAMPLING_EPS = 1e-6
"""A temperature below this samples as 0 (greedy), and a top_p below it as this: the limits they tend to, the
same answers, and values float32 arithmetic cannot take (a temperature of 1e-40 is a division by zero there, a
top_p of 1e-300 is 0 and would drop every token)."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a candidate; the text is cut before the first one (finish reason "stop")."""
    ignore_eos: bool = False
    """Keep sampling past the end-of-sequence token until `max_tokens` (fixed-length benchmarks, as in vLLM)."""


@dataclass(frozen=True)
class Candidate:
    text: str
    tokens: int
    """Tokens generated for this candidate (what it cost, including any cut after a stop string)."""
    finish_reason: FinishReason


@dataclass(frozen=True)
class Generation:
    candidates: list[Candidate]
    """The finished candidates, in the order they were started (without those early rejection cut)."""
    prompt_tokens: int
    rejected_tokens: list[int] = field(default_factory=list)
    """Tokens generated for each candidate that early rejection cut, before it stopped."""


@dataclass(frozen=True)
class EarlyRejection:
    """Speculative rejection (Sun et al., NeurIPS 2024): score every candidate once each has `after_tokens` tokens
    (or finished), finish only the best `keep`, stop the rest."""

    after_tokens: int
    keep: int
    score: Callable[[list[str]], Awaitable[list[float]]]
    """The reward model's scores of the partial answers (decoded text so far), in order."""


Finished = Callable[[int, Candidate], None]
"""Called on the event loop with a candidate's index and the candidate as soon as it finishes, while the others
still decode, so that scoring can start; a backend that cannot tell (one remote answer holds all) never calls it."""


def best_rows(scores: Sequence[float], keep: int) -> list[int]:
    """The indices of the `keep` highest scores, in index order (ties go to the earlier index)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])


@dataclass(frozen=True)
class Score:
    value: float
    """The raw scalar reward (no activation)."""
    tokens: int
    """Tokens the reward model read for this item; 0 where none are read or the remote server does not say."""


class PolicyBackend(Protocol):
    name: str
    version: str
    context_length: int | None
    """Longest prompt plus completion the policy accepts, when known here."""

    supports_early_rejection: bool
    """Whether `generate` takes `rejection` (it needs a decode loop that can stop some candidates)."""

    async def generate(self, messages: Sequence[Message], n: int, params: GenerationParams, seed: int,
                       cancelled: Callable[[], bool], rejection: EarlyRejection | None = None,
                       finished: Finished | None = None) -> Generation:
        """Sample `n` answers to `messages`; same seed, same answers. Raises `Cancelled` once `cancelled()`; with
        `rejection`, finishes only the candidates it keeps; `finished` hears of candidates as they finish (not
        with `rejection`, where a finished candidate may yet be cut)."""
        ...

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        """Prompt length in the policy's tokens, or None when only the remote server can tell."""
        ...

    def requests_running(self) -> int:
        """Requests inside the backend now: generating or waiting for it (vLLM: the engine's own count)."""
        ...

    async def close(self) -> None: ...


class RewardBackend(Protocol):
    version: str
    activation: Activation
    """vLLM's default activation for this model (`classify_activation` of its config), applied by `/classify`."""
    label: str | None
    """The model's name for its one label (`id2label[0]`, `LABEL_0` unless renamed); None where it has none here."""
    max_length: int | None
    """Most tokens the model reads in one item (conversation and answer); None where that is not known here (a
    remote RM's server enforces its own)."""

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        """One score per item, in order (blocking; called from a worker thread). Raises `ContextLengthExceeded`
        for an item longer than `max_length`: it is refused, never truncated."""
        ...

    def close(self) -> None: ...


class Cancelled(Exception):
    """The caller asked to stop (e.g. its client disconnected)."""

    def __init__(self, tokens: int = 0):
        super().__init__("cancelled")
        self.tokens = tokens
        """Tokens generated for the request before it stopped (what the cancelled work cost)."""


class BackendError(RuntimeError):
    """A backend failed for a reason that is not the client's fault (remote down or misconfigured, engine error).

    The message is for the server's log: it may name internal URLs and quote a remote server's answer. The client
    hears only which backend failed, `role`."""

    def __init__(self, message: str, role: Role):
        super().__init__(message)
        self.role = role


class UpstreamBusy(BackendError):
    """Every replica of a remote server answered 429, and none takes requests again before this call's deadline."""

    def __init__(self, message: str, role: Role, *, retry_after_s: float):
        super().__init__(message, role)
        self.retry_after_s = retry_after_s
        """When a replica takes requests again, in seconds from now."""


class RemoteRequestError(ValueError):
    """A remote server refused the request as invalid (its 4xx): the client's request, not our fault. The message
    is the remote server's explanation, for the client."""

    def __init__(self, message: str, role: Role):
        super().__init__(message)
        self.role = role


class ContextLengthExceeded(ValueError):
    """An input longer than the model reads: the client's request, refused rather than truncated."""


def require_finite(score: Score) -> None:
    """Raise `BackendError` unless the reward is a finite number: a NaN would win an argmax, break `soft` and the
    JSON answer, so a reward model that returns one has failed (the check every backend's scores pass)."""
    if not math.isfinite(score.value):
        raise BackendError(f"the reward model returned a non-finite reward ({score.value})", "reward")


@dataclass(frozen=True)
class PolicySpec:
    """How to build one policy backend."""

    name: str
    backend: Literal["hf", "vllm", "openai"] = "hf"
    path: Path | None = None
    base_urls: tuple[str, ...] = ()
    remote_model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings (device, balancing, timeouts, engine arguments...)."""


@dataclass(frozen=True)
class RewardSpec:
    backend: Literal["hf", "remote", "judge"] = "hf"
    path: Path | None = None
    url: str | None = None
    remote_model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@contextmanager
def verified_copy(path: Path, kind: Kind, allow_unverified: bool) -> Iterator[tuple[Path, str]]:
    """The directory to load a checkpoint from and the checkpoint's version, while the `with` block runs.

    That directory is a private temporary copy ($TMPDIR) holding exactly the bytes whose hashes were checked
    against the manifest, removed on exit: a trainer that rewrites `path` during the load cannot make the backend
    serve other weights under this version. A plain Hugging Face directory without a manifest is served only with
    `allow_unverified`, and in place, as it has no version to keep true; it still loads safetensors only, never
    remote code.
    """
    path = Path(path)
    if allow_unverified and not (path / MANIFEST).is_file():
        if not any(path.glob("*.safetensors")):
            raise CheckpointError(f"{path}: no safetensors weights")
        log.warning("%s has no manifest; serving it unverified", path)
        yield path, f"unverified-{path.resolve().name}"
        return
    with tempfile.TemporaryDirectory(prefix="bon-checkpoint-") as copy:
        yield Path(copy), verify(path, kind=kind, copy_to=Path(copy)).version


def classify_activation(config: object | None) -> Activation:
    """vLLM 0.32's default activation of a one-label model with this Hugging Face config (None: no config here,
    as for a remote RM: vLLM's generic one-label default).

    vLLM (`model_executor/layers/pooler/activations.py`, `get_act_fn`) follows transformers' loss for the config's
    `problem_type`: `regression` is the identity (the raw score even with `use_activation: true`; bon's RM trainer
    sets it); any other one-label model gets a sigmoid.
    """
    return "identity" if getattr(config, "problem_type", None) == "regression" else "sigmoid"


def activate(activation: Activation, score: float) -> float:
    """`score` through `activation` (a sigmoid that does not overflow for large |score|)."""
    if activation == "identity":
        return score
    return 1 / (1 + math.exp(-score)) if score >= 0 else math.exp(score) / (1 + math.exp(score))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not hits:
        return text, False
    return text[: min(hits)], True


def resolve_device(device: str) -> str:
    """`auto` is CUDA when a GPU is visible, else the CPU; any other name is taken as given."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
