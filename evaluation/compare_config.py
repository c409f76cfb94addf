"""Settings of `bon eval compare`: Best-of-N on the SFT policy against the DPO and PPO policies."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.cli import positive_ints
from models.checkpoint import checkpoint_root


def _fractions(value: object) -> tuple[float, ...]:
    """A tuple of fractions in (0, 1) from a tuple or from the CLI's "0.125,0.25" string."""
    items = value.split(",") if isinstance(value, str) else value
    out = tuple(sorted({float(v) for v in items if str(v).strip()}))  # type: ignore[union-attr]
    if not out or not all(0 < f < 1 for f in out):
        raise ValueError(f"expected fractions strictly between 0 and 1, got {value!r}")
    return out


def _er_points(value: object) -> tuple[tuple[int, int, float], ...]:
    """(M, k, f) triples from a tuple or from the CLI's "16:8:0.25,32:8:0.125" string ("" for none)."""
    items = [v.split(":") for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    try:
        return tuple((int(m), int(k), float(f)) for m, k, f in items)  # type: ignore[union-attr]
    except ValueError:
        raise ValueError(f"expected M:k:f triples, got {value!r}") from None


@dataclass
class CompareConfig:
    out: Path = Path("runs/compare")
    """Directory to write report.md, results.json and the PNG plots into (e.g. docs/compare)."""
    sft: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """SFT policy: Best-of-N samples from it, and it is the reference of every KL and win rate."""
    rm: Path = field(default_factory=lambda: checkpoint_root() / "rm")
    """Reward model that selects (the proxy reward)."""
    dpo: Path | None = None
    """DPO policy; `dpo` beside the SFT checkpoint when present (`<checkpoints>/dpo`), else left out."""
    ppo: Path | None = None
    """PPO policy; `ppo` beside the SFT checkpoint when present (`<checkpoints>/ppo`), else left out."""
    prompts: int = 200
    """Held-out prompts; every method answers the same ones."""
    split: Literal["validation", "test"] = "test"
    """World split the prompts come from (never the training split)."""
    sft_samples: int = 65
    """SFT answers per prompt: Best-of-N for every N is estimated from them (order statistics), and N up to 64
    leaves one more answer outside the N to play the independent SFT answer of the win rate."""
    tuned_samples: int = 16
    """DPO/PPO answers per prompt: N=1 figures, and Best-of-N on top of them."""
    best_of: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """N of Best-of-N on the SFT policy (comma-separated on the command line)."""
    tuned_best_of: tuple[int, ...] = (1, 4, 16)
    """N of Best-of-N on top of DPO and PPO (1 is the tuned policy alone)."""
    max_new_tokens: int = 96
    """Answer length cap, offline and through the server alike."""
    temperature: float = 1.0
    """Sampling temperature of every policy (1 samples the policy itself, as the KL figures assume)."""
    seed: int = 0
    """Prompts and sampling."""
    server: bool = True
    """Measure latency and cost through `bon serve` (started here on a free port); --no-server skips it."""
    requests: int = 20
    """Requests per measured point (policy × best_of), one at a time (concurrency 1)."""
    device: str = "cpu"
    """Device of the measured server's models: cpu, cuda, cuda:1 or auto."""
    server_timeout: float = 600.0
    """Seconds to wait for the server to load and warm up, and for one request."""
    early_rejection: bool = True
    """Estimate early rejection (speculative rejection) from the SFT answers; --no-early-rejection skips it."""
    er_best_of: tuple[int, ...] = (16, 32, 64)
    """M: candidates early rejection starts (comma-separated; each at most sft_samples)."""
    er_after_tokens: tuple[int, ...] = (4, 8, 16, 32)
    """k: tokens each candidate has when the reward model scores the partial answers."""
    er_keep: tuple[float, ...] = (0.125, 0.25, 0.5)
    """f: the fraction of the M candidates kept (⌈f·M⌉) and finished; the rest are cut."""
    er_server: tuple[tuple[int, int, float], ...] = ((16, 8, 0.25), (32, 4, 0.125), (32, 8, 0.25), (64, 8, 0.125))
    """(M, k, f) also measured through `bon serve` (with --server) for latency and generated tokens, written
    M:k:f, comma-separated ("" for none); like the grid's, their gold comes from the SFT answers."""
    er_target_best_of: int = 16
    """The Best-of-N early rejection is held to: its gold within that N's 95% CI at no more than half its tokens
    (one of best_of)."""

    def __post_init__(self) -> None:
        self.out, self.sft, self.rm = Path(self.out), Path(self.sft), Path(self.rm)
        self.best_of, self.tuned_best_of = positive_ints(self.best_of), positive_ints(self.tuned_best_of)
        if self.prompts < 2:
            raise ValueError("prompts must be at least 2 (a confidence interval needs two)")
        if self.best_of[-1] >= self.sft_samples:
            raise ValueError(f"sft_samples ({self.sft_samples}) must exceed the largest best_of "
                             f"({self.best_of[-1]}): one answer outside the N plays the SFT answer of the win rate")
        if self.tuned_best_of[-1] > self.tuned_samples:
            raise ValueError(f"tuned_samples ({self.tuned_samples}) must be at least the largest tuned_best_of "
                             f"({self.tuned_best_of[-1]})")
        if self.max_new_tokens < 1 or self.temperature <= 0:
            raise ValueError("max_new_tokens must be positive and temperature above 0")
        if self.requests < 1 or self.server_timeout <= 0:
            raise ValueError("requests and server_timeout must be positive")
        self.er_best_of, self.er_after_tokens = positive_ints(self.er_best_of), positive_ints(self.er_after_tokens)
        self.er_keep, self.er_server = _fractions(self.er_keep), _er_points(self.er_server)
        if self.early_rejection:
            for m, k, f in self.er_configs():
                if not 2 <= m <= self.sft_samples or k < 1 or not 0 < f < 1:
                    raise ValueError(f"early rejection M:k:f = {m}:{k}:{f:g} needs 2 ≤ M ≤ sft_samples "
                                     f"({self.sft_samples}), k ≥ 1 and 0 < f < 1")
            if self.er_target_best_of not in self.best_of:
                raise ValueError(f"er_target_best_of ({self.er_target_best_of}) must be one of best_of "
                                 f"{self.best_of}")

    def er_configs(self) -> list[tuple[int, int, float]]:
        """Every (M, k, f) early rejection is estimated at: the grid, then the points measured through the server
        (with --server) outside it."""
        grid = list(itertools.product(self.er_best_of, self.er_after_tokens, self.er_keep))
        return grid + [p for p in self.er_server if self.server and p not in grid]
