"""OpenAI-shaped request and response models, fields in the API reference's order, our additions grouped.

Requests tolerate unknown fields (they are logged and ignored); OpenAI fields this server cannot honour
(`logprobs`, `tools`, `response_format`...) are refused with a 400 rather than silently dropped. Best-of-N
request fields sit after the OpenAI ones: `best_of`, `return_candidates`, `selection`, `selection_temperature`,
`early_rejection`, and vLLM's `ignore_eos`.
Every response carries one `bon` object (`BonInfo`) with the rewards, optional candidates, timings and the
checkpoint versions that served it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from models.interface import SAMPLING_EPS
from server.selection import Strategy

# OpenAI fields that change what a client gets back and that this server cannot honour.
UNSUPPORTED_FIELDS = ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools", "tool_choice",
                      "functions", "function_call", "response_format", "audio", "modalities", "prediction")
MAX_STOP_STRINGS = 4
"""OpenAI's documented limit: up to 4 stop sequences."""
MAX_STOP_CHARS = 64
"""Longest stop string: every candidate's text is searched for each one, and real ones are a few characters."""


def _check_stop(stop: str | list[str] | None) -> str | list[str] | None:
    strings = [stop] if isinstance(stop, str) else stop or []
    if len(strings) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
    if any(len(s) > MAX_STOP_CHARS for s in strings):
        raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
    return stop


Stop = Annotated[str | list[str] | None, AfterValidator(_check_stop)]

# At the API already, so that a tiny temperature is planned as greedy (one candidate) and every backend, vLLM's
# too, gets the values its sampler can take.
def _tiny_temperature_is_greedy(temperature: float | None) -> float | None:
    return 0.0 if temperature is not None and temperature < SAMPLING_EPS else temperature


def _tiny_top_p_keeps_the_top_token(top_p: float | None) -> float | None:
    return SAMPLING_EPS if top_p is not None and top_p < SAMPLING_EPS else top_p


Temperature = Annotated[float | None, Field(ge=0, le=2), AfterValidator(_tiny_temperature_is_greedy)]
TopP = Annotated[float | None, Field(gt=0, le=1), AfterValidator(_tiny_top_p_keeps_the_top_token)]


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class EarlyRejectionRequest(OpenAIModel):
    """Speculative rejection (Sun et al., NeurIPS 2024): all `best_of` candidates start; once each has
    `after_tokens` tokens (or finished) the reward model scores the partial answers, and only the best `keep`
    fraction is finished; the rest stop there."""

    after_tokens: int = Field(ge=1)
    """Tokens each candidate has when the partial answers are scored."""
    keep: float = Field(gt=0, le=1)
    """The fraction of the candidates that go on: ceil(keep x best_of), and never fewer than `n`."""


class BonRequestFields(OpenAIModel):
    best_of: int | None = Field(default=None, ge=1)
    """Candidates sampled and scored; the policy's default when unset (and never fewer than `n`)."""
    return_candidates: bool = False
    """Return every candidate's text, reward and finish reason in `bon.candidates`."""
    selection: Strategy = "argmax"
    """How the returned choices are picked among the candidates: argmax, weighted_vote or soft."""
    selection_temperature: float = Field(default=1.0, gt=0)
    """tau of the soft and weighted_vote strategies: a candidate weighs exp(reward / tau)."""
    early_rejection: EarlyRejectionRequest | None = None
    """Finish only the candidates whose first tokens the reward model likes best (hf and vllm backends)."""
    ignore_eos: bool = False
    """vLLM's sampling extension: sample past the end-of-sequence token up to max_tokens (fixed-length runs)."""


class _ChatCompletionFields(OpenAIModel):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = None
    top_p: TopP = None
    user: str | None = None


class ChatCompletionRequest(BonRequestFields, _ChatCompletionFields):
    """OpenAI's fields, then the Best-of-N ones (pydantic puts the fields of the last base class first)."""


class _CompletionFields(OpenAIModel):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = None
    top_p: TopP = None
    user: str | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """Not in the legacy API; accepted here as in chat completions."""


class CompletionRequest(BonRequestFields, _CompletionFields):
    """OpenAI's fields, then the Best-of-N ones (pydantic puts the fields of the last base class first)."""


class ClassifyRequest(OpenAIModel):
    """vLLM's `/classify` chat form: one conversation that ends with the assistant answer to score."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=2)
    use_activation: bool | None = None
    """As in vLLM 0.32: false is the raw score; unset or true is the RM's default activation, a sigmoid for a
    one-label model unless its config's `problem_type` is `regression` (then the raw score either way).
    bon's remote reward backend sends false."""


class ClassifyUsage(BaseModel):
    """vLLM's `UsageInfo` as its `/classify` fills it: the scored tokens are all prompt tokens."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None
    completion_tokens_details: None = None


class ClassifyData(BaseModel):
    index: int
    label: str | None
    """The config's `id2label[0]` (`LABEL_0` unless renamed), as vLLM; null when the RM's config is not here."""
    probs: list[float]
    num_classes: int


class ClassifyResponse(BaseModel):
    """vLLM 0.32's `ClassificationResponse`, field for field."""

    id: str = Field(default_factory=lambda: new_id("classify"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassifyData]
    usage: ClassifyUsage


# Responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    """Tokens of the returned choices (all candidates' tokens are in `bon.candidate_tokens`)."""
    total_tokens: int


class BonCandidate(BaseModel):
    index: int
    text: str
    reward: float
    finish_reason: str
    tokens: int


class BonTimings(BaseModel):
    queue_seconds: float
    """Waiting for an admission slot."""
    sample_seconds: float
    """Sampling all candidates."""
    score_seconds: float
    """Scoring them (including the micro-batcher's wait)."""
    total_seconds: float
    """From the request's arrival to the selected answer."""


class BonEarlyRejection(BaseModel):
    after_tokens: int
    """Tokens each candidate had when the partial answers were scored."""
    started: int
    """Candidates started (`best_of`)."""
    kept: int
    """Candidates finished and selected among."""
    cut_tokens: list[int]
    """Tokens generated by each cut candidate before it stopped (the engine decodes on while the reward model
    scores, so this can exceed `after_tokens`)."""


class BonInfo(BaseModel):
    """Best-of-N extension of every response."""

    policy: str
    policy_version: str
    reward_model_version: str
    best_of: int
    selection: Strategy
    seed: int
    """The seed used (drawn at random when the request set none): resend it to get the same answer."""
    rewards: list[float]
    """Reward of each returned choice, in choice order."""
    candidate_indices: list[int]
    """Which candidates were returned, in choice order."""
    reward_mean: float
    """Mean reward over all candidates; `rewards[0] - reward_mean` is the reward gain."""
    candidate_tokens: int
    """Completion tokens generated over all candidates, those cut by early rejection included (what the request
    cost)."""
    early_rejection: BonEarlyRejection | None = None
    """What early rejection cut, when the request asked for it."""
    guard_reward: float | None = None
    """The guard's reward of the first returned choice, when the server runs one (`--guard`): a held-out
    reward the selection never saw, so `rewards[0]` rising while it falls is overoptimisation."""
    candidates: list[BonCandidate] | None = None
    """Every candidate, when the request set `return_candidates`."""
    timings: BonTimings


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class CompletionChoice(BaseModel):
    finish_reason: str | None
    index: int
    logprobs: None = None
    text: str


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    choices: list[ChatChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None
    """The policy checkpoint's version."""
    usage: Usage
    bon: BonInfo


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    choices: list[CompletionChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: Usage
    bon: BonInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    delta: ChunkDelta
    finish_reason: str | None = None
    index: int
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    choices: list[ChatChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: Usage | None = None
    bon: BonInfo | None = None
    """Sent once, on the first chunk: the winner is known before its first token is streamed."""


class CompletionChunk(BaseModel):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: Usage | None = None
    bon: BonInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bon"
    bon: dict[str, Any]
    """The policy's version, backend and default best_of."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
