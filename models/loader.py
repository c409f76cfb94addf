"""Backend name -> implementation. Each implementation is imported only when a spec names it.

A backend class provides `load(spec)`, a classmethod that builds it (blocking: weights, engines, HTTP
clients). Registering a new backend is one line here; nothing else in the server changes.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.interface import PolicyBackend, PolicySpec, RewardBackend, RewardSpec

POLICY_BACKENDS: dict[str, str] = {
    "hf": "models.policy_hf:HFPolicy",
    "vllm": "models.policy_vllm:VLLMPolicy",
    "openai": "models.policy_openai:OpenAIPolicy",
}
REWARD_BACKENDS: dict[str, str] = {
    "hf": "models.reward_hf:HFReward",
    "remote": "models.reward_remote:RemoteReward",
    "judge": "models.reward_judge:JudgeReward",
}


def _backend_class(registry: dict[str, str], kind: str, name: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {kind} backend {name!r} (known: {', '.join(sorted(registry))})")
    module, _, attribute = registry[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_policy(spec: PolicySpec) -> PolicyBackend:
    """Build a policy backend, importing only the implementation that is asked for."""
    return _backend_class(POLICY_BACKENDS, "policy", spec.backend).load(spec)


def load_reward(spec: RewardSpec) -> RewardBackend:
    """Build a reward backend, importing only the implementation that is asked for."""
    return _backend_class(REWARD_BACKENDS, "reward", spec.backend).load(spec)
