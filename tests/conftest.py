"""Shared fixtures: tiny real checkpoints trained on the embedded world in seconds (never downloaded)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from training.rm_config import RMConfig
from training.sft_config import ModelShape, SFTConfig

if TYPE_CHECKING:
    from common.servers import Server

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]

TINY_SHAPE = ModelShape(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=256, vocab_size=600)


def tiny_sft_config(out: Path, **overrides: object) -> SFTConfig:
    """An SFT run that takes seconds: tiny shape, few steps, small world sample."""
    values: dict[str, object] = dict(out=out, model=TINY_SHAPE, train_examples=640, validation_examples=64,
                                     steps=40, batch_size=16, lr=1e-2, warmup=5, eval_every=20, save_every=20,
                                     eval_prompts=0, max_length=96)
    values.update(overrides)
    return SFTConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def tiny_sft(checkpoint_root: Path) -> Path:
    """A tiny SFT policy checkpoint, trained once per test session."""
    from training.sft import train_sft

    out = checkpoint_root / "sft"
    train_sft(tiny_sft_config(out))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy and RM that servers load in seconds (`tests.server.conftest.build_tiny_checkpoints`)."""
    from tests.server.conftest import build_tiny_checkpoints

    return build_tiny_checkpoints(tmp_path_factory.mktemp("bon-checkpoints"))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def vllm_server(tiny_checkpoints: Path, log_dir: Path) -> Iterator[Server]:
    """`bon serve --policy-backend vllm` of the tiny checkpoints, shared by the vLLM tests (one engine start)."""
    from tests.server.conftest import launch_server

    # Eager mode: torch.compile would add a minute to each engine start on 2 cores and gain nothing at this size.
    with launch_server(tiny_checkpoints, log_dir, "--policy-backend", "vllm", "--vllm-engine-args",
                       '{"enforce_eager": true}', "--max-best-of", "32", "--max-in-flight", "16",
                       "--max-prompt-tokens", "4096", "--default-best-of", "4") as server:
        yield server.wait(timeout_s=300)


def tiny_rm_config(out: Path, parent: Path, **overrides: object) -> RMConfig:
    """A decoder RM from the tiny SFT policy in seconds: few pairs, few steps."""
    values: dict[str, object] = dict(out=out, parent=parent, pairs=128, eval_pairs=32, epochs=2.0, batch_size=16,
                                     lr=1e-3, warmup=2, max_length=128, eval_every=1000, save_every=1000)
    values.update(overrides)
    return RMConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_rm(checkpoint_root: Path, tiny_sft: Path) -> Path:
    """A tiny decoder reward model trained from the tiny SFT policy, once per test session."""
    from training.rm import train_rm

    out = checkpoint_root / "rm"
    train_rm(tiny_rm_config(out, tiny_sft))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `vllm` tests where vLLM is not installed, unless BON_REQUIRE_VLLM says they must run."""
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("BON_REQUIRE_VLLM"):
        raise pytest.UsageError("BON_REQUIRE_VLLM is set but vLLM is not installed (make install-vllm)")
    skip = pytest.mark.skip(reason="needs vLLM: make test-vllm installs its CPU build")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def config_flags(cfg: object) -> list[str]:
    """The `bon train` flags that rebuild `cfg` (nested dataclasses as `--model.hidden-size`)."""
    flags: list[str] = []
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flags += [flag.replace("--", f"--{f.name}.", 1) if flag.startswith("--") else flag
                      for flag in config_flags(value)]
        elif isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{f.name.replace('_', '-')}")
        elif value is not None:
            flags += [f"--{f.name.replace('_', '-')}", str(value)]
    return flags


def bon_train(method: str, cfg: object, processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `bon train METHOD` as users do, in 1 process or under torchrun with `processes` ranks."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "bon.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), "-m", "bon.cli"]
    return subprocess.run([*launcher, "train", method, *config_flags(cfg), "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
