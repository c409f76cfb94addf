"""The admin API's request and response bodies (hot swap), as `/openapi.json` describes them.

Requests refuse unknown fields (a typo in an operator's call must not pass silently); every response names its
`object`, as the OpenAI-shaped ones do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.registry import CheckpointInfo


class LoadPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    """A directory under the checkpoint root, relative to it (`dpo`, `runs/ppo-3`) or absolute inside it."""
    best_of: int | None = Field(default=None, ge=1)
    """The policy's default best_of; the replaced policy's (or the server default) if unset."""


class SetBestOf(BaseModel):
    model_config = ConfigDict(extra="forbid")

    best_of: int = Field(ge=1)


class LoadReward(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    root: str
    """The checkpoint root, resolved."""
    data: list[CheckpointInfo]
    """Every checkpoint directory under the root, sorted by name."""


class Version(BaseModel):
    """One version served under a name."""

    version: str
    checkpoint: str
    """As the operator named it, or as configured."""
    loaded_at: float | None
    """Unix time of the switch; null for the models configured at start."""


class PolicyStatus(BaseModel):
    version: str
    backend: str
    default_best_of: int
    checkpoint: str | None
    in_flight: int
    """Requests being answered by this version now."""
    history: list[Version]
    """Oldest first; the last one is served now."""


class RewardStatus(BaseModel):
    version: str
    checkpoint: str | None
    in_flight: int
    history: list[Version]


class ModelsStatus(BaseModel):
    object: Literal["models"] = "models"
    policies: dict[str, PolicyStatus]
    reward: RewardStatus
    unloaded: dict[str, list[Version]]
    """Names that were unloaded, with their history (a rollback serves the last one again)."""


class SwapTimings(BaseModel):
    validate_seconds: float
    load_seconds: float
    warmup_seconds: float
    total_seconds: float


class Swap(BaseModel):
    """A load or rollback, answered once the new model serves."""

    object: Literal["swap"] = "swap"
    target: Literal["policy", "reward"]
    name: str
    checkpoint: str
    version: str
    previous_version: str | None
    """What served under the name before; null for a new policy."""
    switched_at: float
    """The server's Unix time at the switch."""
    previous_in_flight: int
    """Requests still finishing on the previous version, which is closed after the last of them."""
    timings: SwapTimings


class PolicySwap(Swap):
    default_best_of: int


class BestOf(BaseModel):
    object: Literal["policy"] = "policy"
    name: str
    version: str
    default_best_of: int


class Unload(BaseModel):
    object: Literal["unload"] = "unload"
    name: str
    version: str
    in_flight: int
    """Requests still finishing on it; it is closed after the last of them."""
