"""The trainers `bon train <method>` knows, each a (config class, train function) pair, imported on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _sft() -> tuple[type, Callable[[Any], Any]]:
    from training.sft import train_sft
    from training.sft_config import SFTConfig

    return SFTConfig, train_sft


def _rm() -> tuple[type, Callable[[Any], Any]]:
    from training.rm import train_rm
    from training.rm_config import RMConfig

    return RMConfig, train_rm


def _dpo() -> tuple[type, Callable[[Any], Any]]:
    from training.dpo import train_dpo
    from training.dpo_config import DPOConfig

    return DPOConfig, train_dpo


def _ppo() -> tuple[type, Callable[[Any], Any]]:
    from training.ppo import train_ppo_for_cli
    from training.ppo_config import PPOConfig

    return PPOConfig, train_ppo_for_cli


TRAINERS: dict[str, Callable[[], tuple[type, Callable[[Any], Any]]]] = {
    "sft": _sft,
    "rm": _rm,
    "dpo": _dpo,
    "ppo": _ppo,
}
