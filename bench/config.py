"""Settings of `bon bench`: what is timed, how often, and with which checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.cli import positive_ints
from models.checkpoint import checkpoint_root

TARGETS = {
    "a": "naive transformers",
    "b": "bon pipeline, in process (hf)",
    "c": "bon serve, hf backend, HTTP",
    "d": "bon serve, vllm backend, HTTP",
    "e": "vllm serve n=N + RM batch",
}
"""The five ways of answering a Best-of-N request that the benchmark times, by their letters:
(a) N `generate` calls then N reward-model calls, written with transformers alone; (b) bon's pipeline without
HTTP; (c) and (d) `bon serve` over HTTP; (e) vLLM's own server asked for n=N, then the N scored in one batch."""
SECTIONS = ("throughput", "memory")
"""Parts of a run besides the five latency targets, which `skip` may also name."""


def _names(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    out = tuple(sorted({str(v).strip() for v in items if str(v).strip()}))  # type: ignore[union-attr]
    unknown = set(out) - set(TARGETS) - set(SECTIONS)
    if unknown:
        raise ValueError(f"skip: unknown {', '.join(sorted(unknown))} (known: {', '.join([*TARGETS, *SECTIONS])})")
    return out


@dataclass
class BenchConfig:
    out: Path = Path("bench/results")
    """Directory of the results: <date>-<host>-<device>.json and its latency plot, written atomically."""
    policy: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """Policy checkpoint that every target samples from."""
    rm: Path = field(default_factory=lambda: checkpoint_root() / "rm")
    """Reward model checkpoint that every target scores with."""
    best_of: tuple[int, ...] = (1, 4, 16, 64)
    """N of Best-of-N timed for every target (comma-separated on the command line)."""
    repeats: int = 5
    """Timed requests per (target, N), each on its own prompt; the same prompts for every target."""
    warmup: int = 1
    """Untimed requests before each (target, N), so that one-off costs stay out of the figures."""
    max_tokens: int = 64
    """New tokens per candidate; every candidate gets exactly this many (ignore_eos, min_new_tokens)."""
    temperature: float = 1.0
    """Sampling temperature of every target."""
    seed: int = 0
    """Prompts (the embedded world's test split) and sampling."""
    skip: tuple[str, ...] = ()
    """Targets (a-e) and sections (throughput, memory) to leave out, comma-separated (a smaller, faster run)."""
    throughput_best_of: int = 8
    """best_of of the throughput points (targets c and d)."""
    concurrency: tuple[int, ...] = (1, 8)
    """Closed-loop clients of the throughput points; the report gives the last over the first."""
    throughput_requests: int = 32
    """Requests per throughput point (after one untimed round)."""
    memory_best_of: int = 64
    """best_of of the peak-memory point (target c's server)."""
    memory_concurrency: int = 8
    """Clients of the peak-memory point and of the growth check."""
    memory_requests: int = 16
    """Requests of the peak-memory point."""
    leak_requests: int = 1000
    """Requests of the growth check: the server's resident memory is read before, during and after them."""
    leak_best_of: int = 2
    """best_of of the growth check's requests."""
    leak_max_tokens: int = 16
    """New tokens per candidate in the growth check (what might leak is per request, not per token)."""
    vllm_kv_cache_bytes: int = 2 << 30
    """KV cache of each vLLM engine (targets d and e alike), as the CPU build would otherwise take a share of RAM."""
    server_timeout: float = 600.0
    """Seconds to wait for a server to get ready, and for one request."""

    def __post_init__(self) -> None:
        self.out, self.policy, self.rm = Path(self.out), Path(self.policy), Path(self.rm)
        self.best_of, self.concurrency = positive_ints(self.best_of), positive_ints(self.concurrency)
        self.skip = _names(self.skip)
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be at least 1 and warmup at least 0")
        if min(self.max_tokens, self.leak_max_tokens, self.throughput_best_of, self.memory_best_of,
               self.leak_best_of, self.memory_concurrency) < 1:
            raise ValueError("token counts, best_of values and concurrency must be positive")
        if min(self.throughput_requests, self.memory_requests) < 1 or self.leak_requests < 0:
            raise ValueError("request counts must be positive (leak_requests may be 0: no growth check)")
        if self.temperature <= 0 or self.server_timeout <= 0 or self.vllm_kv_cache_bytes < 1:
            raise ValueError("temperature, server_timeout and vllm_kv_cache_bytes must be positive")

    def runs(self, name: str) -> bool:
        """Whether target or section `name` is part of this run."""
        return name not in self.skip

    @property
    def largest_best_of(self) -> int:
        """The most candidates any request of the run asks for (the servers' max_best_of)."""
        return max(*self.best_of, self.throughput_best_of, self.memory_best_of, self.leak_best_of)
