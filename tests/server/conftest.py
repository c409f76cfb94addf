"""Tiny real checkpoints and real server processes for the server tests.

`build_tiny_checkpoints` is the one place that decides what the servers serve: swap its body for trained
tiny checkpoints and every server test follows.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from common.servers import Server, free_port, start_server
from models.checkpoint import write_checkpoint
from training.sft_config import ModelShape
from training.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[2]
SHAPE = ModelShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=256, vocab_size=400)

_SUBJECTS = ["my teddy bear", "the small dog", "a red kite", "my little sister", "the old cat", "our garden"]
_ACTIONS = ["play a quiet game", "read a short story", "go for a walk", "build a pillow fort", "draw a picture",
            "have a picnic", "sing a happy song", "plant some flowers"]
_QUESTIONS = ["What can I do with {s} today?", "Can you suggest an activity for {s}?",
              "How do I keep {s} happy?", "Is it a good idea to wash {s}?", "What is two plus {n}?"]
_ANSWERS = ["You could {a} with {s}.", "Try to {a} together, it is fun.", "A nice idea is to {a}.",
            "The answer is {m}.", "No, that is not a good idea.", "Sure! {A} and then rest."]


def tiny_pairs(count: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """Hand-written (question, answer) sentences, varied by a seeded choice of slots."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        slots = {"s": rng.choice(_SUBJECTS), "a": rng.choice(_ACTIONS), "n": rng.randint(1, 9)}
        slots |= {"m": 2 + slots["n"], "A": slots["a"].capitalize()}
        pairs.append((rng.choice(_QUESTIONS).format(**slots), rng.choice(_ANSWERS).format(**slots)))
    return pairs


def build_tiny_checkpoints(root: Path, steps: int = 30) -> Path:
    """A policy (`root/sft`, briefly trained) and a random-weight decoder RM (`root/rm`), both tiny."""
    from training.sft import build_policy, collate, encode_examples, token_nll  # only tests that serve need it

    torch.manual_seed(0)
    pairs = tiny_pairs()
    tokenizer = train_tokenizer([text for pair in pairs for text in pair], vocab_size=SHAPE.vocab_size)
    policy = build_policy(SHAPE, tokenizer)
    data = encode_examples(tokenizer, pairs, max_length=64)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for step in range(steps):
        batch = collate([data[(step * 16 + i) % len(data)] for i in range(16)], tokenizer.pad_token_id)
        nll, count = token_nll(policy, batch)
        optimizer.zero_grad()
        (nll / count).backward()
        optimizer.step()
    policy.eval()

    def save_policy(tmp: Path) -> None:
        policy.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    write_checkpoint(root / "sft", save_policy, kind="policy", method="sft")

    reward = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=SHAPE.hidden_size, intermediate_size=SHAPE.intermediate_size,
        num_hidden_layers=SHAPE.num_hidden_layers, num_attention_heads=SHAPE.num_attention_heads,
        num_key_value_heads=SHAPE.num_attention_heads, max_position_embeddings=SHAPE.max_position_embeddings,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))

    def save_reward(tmp: Path) -> None:
        reward.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    write_checkpoint(root / "rm", save_reward, kind="reward", method="rm")
    return root


SERVE = (sys.executable, "-m", "server")
BON_SERVE = (sys.executable, "-m", "bon.cli", "serve")
VLLM_SERVE = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
"""vLLM's own OpenAI server, as `vllm serve` starts it (the CPU build's `vllm` console script is broken)."""


def launch_server(checkpoints: Path, log_dir: Path, *args: str, command: tuple[str, ...] = SERVE) -> Server:
    """`python -m server` (or `bon serve`) on a free port, as a user starts it (call `wait` before using it)."""
    port = free_port()
    env = {**os.environ, "BON_CHECKPOINTS": str(checkpoints), "BON_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    return start_server([*command, "--port", str(port), *args], f"http://127.0.0.1:{port}",
                        log_dir / f"server-{port}.log", env=env, cwd=REPO)


class Sampler:
    """Calls `read` every `every_s` seconds in a thread while a `with` block runs; keeps (time, value) readings."""

    def __init__(self, read: Callable[[], float], every_s: float = 0.02):
        self.read, self.every_s, self.readings = read, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append((time.monotonic(), self.read()))
            self._stop.wait(self.every_s)

    def peak(self) -> float:
        return max(value for _, value in self.readings)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tampered_copy(checkpoints: Path, root: Path) -> Path:
    """The checkpoints with the reward model's weights altered after hashing: its manifest no longer verifies."""
    shutil.copytree(checkpoints / "sft", root / "sft")
    shutil.copytree(checkpoints / "rm", root / "rm")
    with open(root / "rm" / "model.safetensors", "ab") as f:
        f.write(b"tampered")
    return root


MAIN_ARGS = ("--default-best-of", "4", "--max-in-flight", "64", "--max-queue", "64", "--rm-max-batch", "64",
             "--rm-max-wait-ms", "50", "--default-max-tokens", "16", "--max-best-of", "32")
"""The shared server: generous admission, an RM batch window wide enough to merge concurrent requests."""
API_KEY = "sk-test-key"
STRICT_ARGS = ("--api-key", API_KEY, "--max-in-flight", "1", "--max-queue", "1", "--max-prompt-tokens", "32",
               "--max-body-bytes", "4096", "--retry-after-s", "2")
"""API keys, one request in flight, a queue of one, short prompts and small bodies."""


def two_policy_config(checkpoints: Path, directory: Path) -> Path:
    """A TOML config serving the tiny policy under two names with different default best_of."""
    config = directory / "serve.toml"
    sft, rm = checkpoints / "sft", checkpoints / "rm"
    config.write_text(f'default_best_of = 2\n[policies.sft]\npath = "{sft}"\n'
                      f'[policies.twin]\npath = "{sft}"\nbest_of = 3\n[reward]\npath = "{rm}"\n')
    return config


def front_args(main: Server, dead_url: str) -> tuple[str, ...]:
    """A server whose policy is the main server (behind a dead replica) and whose RM is the main's /classify."""
    return ("--policy-backend", "openai", "--policy", "sft", "--openai-base-url", dead_url, "--openai-base-url",
            main.url + "/v1", "--reward-backend", "remote", "--reward-url", main.url + "/classify",
            "--default-best-of", "3", "--checkpoints", "/nonexistent")


@pytest.fixture(scope="session")
def servers(tiny_checkpoints: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            unused_url: str) -> Iterator[dict]:
    """Every server the tests use, started together (process start-up dominates): main; strict, configured by
    a file; broken, which never gets ready; front, which serves through main."""
    broken_root = tampered_copy(tiny_checkpoints, tmp_path_factory.mktemp("tampered"))
    main = launch_server(tiny_checkpoints, log_dir, *MAIN_ARGS)
    config = two_policy_config(tiny_checkpoints, tmp_path_factory.mktemp("config"))
    launched = {"main": main, "strict": launch_server(Path("/nonexistent"), log_dir, *STRICT_ARGS, "--config",
                                                      str(config)),
                "broken": launch_server(broken_root, log_dir, command=BON_SERVE),
                "front": launch_server(tiny_checkpoints, log_dir, *front_args(main, unused_url))}
    try:
        yield launched
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="session")
def server(servers: dict) -> Server:
    return servers["main"].wait()


@pytest.fixture(scope="session")
def unused_url() -> str:
    """A URL where nothing listens (a dead replica)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key the strict server accepts."""
    return API_KEY


@pytest.fixture(scope="session")
def strict(servers: dict) -> Server:
    return servers["strict"].wait()


@pytest.fixture(scope="session")
def front(servers: dict) -> Server:
    servers["main"].wait()
    return servers["front"].wait()


@pytest.fixture(scope="session")
def broken(servers: dict) -> Server:
    """Alive (`/health`), never ready: its reward model fails verification."""
    return servers["broken"].wait("/health")
