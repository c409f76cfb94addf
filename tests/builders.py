"""What the tests build and share: tiny checkpoints, the checkpoint root the hot-swap tests serve, `bon train`
runs, server processes started as users start them, and waits on a condition.

A plain module, no tests and no fixtures: the fixtures that use these live in tests/conftest.py, and a test
module imports its builders from here, never from a conftest or another test module (tests/test_layout.py).
`build_tiny_checkpoints` is the one place that decides what the servers serve: swap its body for trained tiny
checkpoints and every server test follows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from common.servers import Server, free_port, start_server
from models.checkpoint import MANIFEST, read_manifest, write_checkpoint
from models.registry import Registry
from server import protocol
from training.rm_config import RMConfig
from training.sft_config import ModelShape, SFTConfig
from training.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]

# Training runs: `bon train` on the embedded world, in seconds.

TINY_SHAPE = ModelShape(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=256, vocab_size=600)


def tiny_sft_config(out: Path, **overrides: object) -> SFTConfig:
    """An SFT run that takes seconds: tiny shape, few steps, small world sample."""
    values: dict[str, object] = dict(out=out, model=TINY_SHAPE, train_examples=640, validation_examples=64,
                                     steps=40, batch_size=16, lr=1e-2, warmup=5, eval_every=20, save_every=20,
                                     eval_prompts=0, max_length=96)
    values.update(overrides)
    return SFTConfig(**values)  # type: ignore[arg-type]


def tiny_rm_config(out: Path, parent: Path, **overrides: object) -> RMConfig:
    """A decoder RM from the tiny SFT policy in seconds: few pairs, few steps."""
    values: dict[str, object] = dict(out=out, parent=parent, pairs=128, eval_pairs=32, epochs=2.0, batch_size=16,
                                     lr=1e-3, warmup=2, max_length=128, eval_every=1000, save_every=1000)
    values.update(overrides)
    return RMConfig(**values)  # type: ignore[arg-type]


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


# The tiny checkpoints the servers serve: hand-written sentences, not the world, so that they build in seconds.

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


def tampered_copy(checkpoints: Path, root: Path) -> Path:
    """The checkpoints with the reward model's weights altered after hashing: its manifest no longer verifies."""
    shutil.copytree(checkpoints / "sft", root / "sft")
    shutil.copytree(checkpoints / "rm", root / "rm")
    with open(root / "rm" / "model.safetensors", "ab") as f:
        f.write(b"tampered")
    return root


# The checkpoint root of the registry and hot-swap tests: working variants and one broken checkpoint per failure.

WEIGHTS = "model.safetensors"


def perturb(weights: Path, seed: int, scale: float = 0.05) -> None:
    """Nudge every tensor a little: a different checkpoint (and version) that still behaves."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})


def derive(src: Path, dst: Path, method: str, change: Callable[[Path], None] | None = None,
           figures: dict | None = None) -> None:
    """A checkpoint written (and hashed) by `write_checkpoint` from `src`'s files, after `change(tmp_dir)`."""
    parent = read_manifest(src)

    def save(tmp: Path) -> None:
        for f in src.iterdir():
            if f.name != MANIFEST:
                shutil.copy2(f, tmp / f.name)
        if change is not None:
            change(tmp)

    write_checkpoint(dst, save, kind=parent.kind, method=method, parent=parent.version, figures=figures)


def _edit_config(**values: object) -> Callable[[Path], None]:
    def change(tmp: Path) -> None:
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**config, **values}))
    return change


def _truncate(tmp: Path) -> None:
    data = (tmp / WEIGHTS).read_bytes()
    (tmp / WEIGHTS).write_bytes(data[: len(data) - 256])


def _grow_tokenizer(tmp: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    tokenizer.add_tokens([f"extra{i}" for i in range(40)])
    tokenizer.save_pretrained(str(tmp))


def _drop_chat_template(tmp: Path) -> None:
    (tmp / "chat_template.jinja").unlink()
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))


POISON = "~"
"""What the poisoned RM cannot score: its token's embedding is NaN, so any item holding it scores NaN (as a real
RM can overflow in half precision) while every other item scores as in the tiny RM."""


def poisoned_copy(checkpoints: Path, root: Path) -> Path:
    """The tiny policy beside an RM that scores NaN exactly for the items holding `POISON`."""
    shutil.copytree(checkpoints / "sft", root / "sft")

    def poison(tmp: Path) -> None:
        token = AutoTokenizer.from_pretrained(str(tmp)).convert_tokens_to_ids(POISON)
        tensors = load_file(str(tmp / WEIGHTS))
        tensors["model.embed_tokens.weight"][token] = float("nan")
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})

    derive(checkpoints / "rm", root / "rm", "rm", poison)
    return root


BAD_POLICIES = {
    "bad/missing-file": "missing file model.safetensors",
    "bad/flipped-byte": "sha256 mismatch",
    "bad/truncated": "truncated weights",
    "bad/unknown-arch": "unknown architecture",
    "bad/tokenizer": "tokenizer does not match",
    "bad/no-chat-template": "no chat template",
    "bad/remote-code": "trust_remote_code is off",
}
"""Refused by the registry before anything is loaded: checkpoint -> what the message says."""
LOAD_FAILS = "bad/wrong-shapes"
"""Passes every registry check; its weights do not fit its config, so loading it fails."""
BAD_REWARDS = {"bad/rm-flipped-byte": "sha256 mismatch"}


def build_swap_root(tiny: Path, root: Path) -> Path:
    """`root` with sft, dpo, ppo, rm, rm-v2 (all working), the broken checkpoints above, `escape` (a link to a
    valid checkpoint outside the root) and `bad/linked-file` (a weight file linked to outside the root)."""
    shutil.copytree(tiny / "sft", root / "sft")
    shutil.copytree(tiny / "rm", root / "rm")
    sft, rm = root / "sft", root / "rm"
    derive(sft, root / "dpo", "dpo", lambda tmp: perturb(tmp / WEIGHTS, 1), figures={"gold_reward": 0.4})
    derive(sft, root / "ppo", "ppo", lambda tmp: perturb(tmp / WEIGHTS, 2), figures={"gold_reward": 0.5})
    derive(rm, root / "rm-v2", "rm", lambda tmp: perturb(tmp / WEIGHTS, 3))
    derive(sft, root / "bad/missing-file", "dpo")
    (root / "bad/missing-file" / WEIGHTS).unlink()
    for name, src in (("bad/flipped-byte", sft), ("bad/rm-flipped-byte", rm)):
        derive(src, root / name, read_manifest(src).method)
        data = bytearray((root / name / WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (root / name / WEIGHTS).write_bytes(bytes(data))
    derive(sft, root / "bad/truncated", "dpo", _truncate)
    derive(sft, root / "bad/unknown-arch", "dpo", _edit_config(model_type="nope"))
    derive(sft, root / "bad/tokenizer", "dpo", _grow_tokenizer)
    derive(sft, root / "bad/no-chat-template", "dpo", _drop_chat_template)
    derive(sft, root / "bad/remote-code", "dpo", _edit_config(auto_map={"AutoModelForCausalLM": "evil.Model"}))
    derive(sft, root / LOAD_FAILS, "dpo", _edit_config(hidden_size=128, intermediate_size=256))

    def link_weights_outside(tmp: Path) -> None:
        (tmp / WEIGHTS).unlink()
        (tmp / WEIGHTS).symlink_to(tiny / "sft" / WEIGHTS)

    derive(sft, root / "bad/linked-file", "dpo", link_weights_outside)
    (root / "escape").symlink_to(tiny / "sft")
    return root


# Server processes, started on a free port as users start them.

SERVE = (sys.executable, "-m", "server")



@contextmanager
def script_server(script: str, probe: str, log: Path) -> Iterator[Server]:
    """A test's own small HTTP server (a script that takes `--port`) on a free port while the block runs.

    Stopped without grace: a graceful shutdown would wait out the slow or dripping answers it is built to give.
    """
    port = free_port()
    server = start_server([sys.executable, script, "--port", str(port)], f"http://127.0.0.1:{port}", log)
    try:
        yield server.wait(probe, timeout_s=30)
    finally:
        server.stop(grace_s=0)

def launch_server(checkpoints: Path, log_dir: Path, *args: str, command: tuple[str, ...] = SERVE) -> Server:
    """`python -m server` (or `bon serve`) on a free port, as a user starts it (call `wait` before using it)."""
    port = free_port()
    env = {**os.environ, "BON_CHECKPOINTS": str(checkpoints), "BON_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # else every vLLM engine of the session is pinned to one core
    return start_server([*command, "--port", str(port), *args], f"http://127.0.0.1:{port}",
                        log_dir / f"server-{port}.log", env=env, cwd=REPO)


MAIN_ARGS = ("--default-best-of", "4", "--max-in-flight", "64", "--max-queue", "64", "--rm-max-batch", "64",
             "--rm-max-wait-ms", "50", "--default-max-tokens", "16", "--max-best-of", "32")
"""The shared server: generous admission, an RM batch window wide enough to merge concurrent requests."""
API_KEY = "sk-test-key"
BROKEN_ADMIN_KEY = "admin-test-key"
"""The broken server's admin key: with it, `/ready` says what failed."""
STRICT_ARGS = ("--api-key", API_KEY, "--max-in-flight", "1", "--max-queue", "1", "--max-prompt-tokens", "32",
               "--max-body-bytes", "4096", "--retry-after-s", "2")
"""API keys, one request in flight, a queue of one, short prompts and small bodies."""
GUARDED_ADMIN_KEY = "admin-guarded-key"
BODY_READ_TIMEOUT_S = 2.0


def guarded_args(checkpoints: Path) -> tuple[str, ...]:
    """Both keys, a short body-read deadline, and limits that keep any request cheap (two candidates of at most
    four tokens): the server the fuzzer, the auth test and the slow-body test call. The policy and the RM are named
    by path, so the checkpoint root (the launch's) can stay empty and no admin load the fuzzer sends can swap them."""
    return ("--api-key", API_KEY, "--admin-key", GUARDED_ADMIN_KEY, "--policy", f"sft={checkpoints / 'sft'}",
            "--reward", str(checkpoints / "rm"), "--body-read-timeout-s", str(BODY_READ_TIMEOUT_S),
            "--max-best-of", "2", "--default-best-of", "2", "--max-n", "2", "--max-tokens", "4",
            "--default-max-tokens", "4", "--max-prompt-tokens", "64", "--max-body-bytes", "4096")


# Request bodies for property tests: any JSON value, and valid requests with some fields replaced by any JSON.

CHAT_BODY = {"model": "sft", "messages": [{"role": "user", "content": "What can I do with my teddy bear today?"}]}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=4), max_leaves=12)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict:
    """A body every request model accepts (chat, legacy completion, classify) with up to three fields, theirs,
    OpenAI's unsupported ones or any name, set to any JSON value."""
    answer = {"role": "assistant", "content": "Play a quiet game."}
    body = {**CHAT_BODY, "prompt": "hi", "messages": [*CHAT_BODY["messages"], answer]}
    fields = sorted({*protocol.ChatCompletionRequest.model_fields, *protocol.CompletionRequest.model_fields,
                     *protocol.UNSUPPORTED_FIELDS})
    for field in draw(st.lists(st.sampled_from(fields) | st.text(max_size=8), max_size=3)):
        body[field] = draw(JSON_VALUES)
    return body


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


class Sampler:
    """Calls `read` every `every_s` seconds in a thread while a `with` block runs; keeps (time, value) readings."""

    def __init__(self, read: Callable[[], float], every_s: float = 0.02):
        self.read, self.every_s = read, every_s
        self.readings: list[tuple[float, float]] = []
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


# Waits on a condition: what a test needs to hold before it goes on, never a fixed time.

POLL_S = 0.02


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "the condition") -> None:
    """Return as soon as `predicate()` is true; fail the test if it is still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(POLL_S)


async def wait_until_async(predicate: Callable[[], object], timeout_s: float = 10.0,
                           what: str = "the condition") -> None:
    """`wait_until` inside an event loop: the loop runs the code under test between polls."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        await asyncio.sleep(POLL_S)


# Trainers killed mid-run: `bon train` as a process, SIGKILLed at a chosen moment, its checkpoint root read back.


def run_state(out: Path) -> Path:
    """The resume state `bon train` keeps while it trains the checkpoint `out` (`<root>/.runs/<name>`)."""
    return out.parent / ".runs" / out.name / "state.json"


def checkpoint_being_written(out: Path) -> bool:
    """Whether the checkpoint `out` is half-written: its hidden temporary sibling is there and `out` is not yet."""
    return not out.exists() and out.parent.is_dir() and any(
        p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir())


def registry_view(root: Path) -> dict[str, bool]:
    """What the checkpoint registry lists under `root`: each checkpoint's name, and whether it validates (every
    file hashed, as before a load)."""
    return {info.name: bool(info.valid) for info in Registry(root).list(verify_hashes=True)}


@dataclasses.dataclass
class KilledRun:
    """What a SIGKILL left on disk."""

    step: int
    """The step of the resume state it left."""
    listed: dict[str, bool]
    """What the registry listed under the checkpoint's root right after the kill (`registry_view`)."""
    half_written: bool
    """Whether it left the checkpoint half-written (`checkpoint_being_written`)."""


KILL_MOMENTS: dict[str, Callable[[Path], bool]] = {
    "first-save": lambda out: run_state(out).is_file(),
    "checkpoint-write": checkpoint_being_written,
}
"""When `kill_training` kills a run that writes the checkpoint `out`: as soon as its first resume state is
saved (mid-training), or while it writes the checkpoint itself (after its last resume save)."""
KILLS = [pytest.param("first-save"), pytest.param("checkpoint-write", marks=pytest.mark.slow)]
"""The moments each trainer's kill test takes: the first in `make test`, the other in `make test-slow`."""


def kill_training(method: str, cfg: object, moment: str, log: Path, timeout_s: float = 180) -> KilledRun:
    """Start `bon train METHOD` as users do, SIGKILL it at `moment` (a key of `KILL_MOMENTS`), read what it left.

    Fails when the run ended on its own first, or left no resume state; its output is in `log`.
    """
    out = Path(cfg.out)  # type: ignore[attr-defined]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as output:
        proc = subprocess.Popen([sys.executable, "-m", "bon.cli", "train", method, *config_flags(cfg)], env=env,
                                cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    try:
        # Polled every millisecond, not every POLL_S: a tiny checkpoint is written in about ten.
        while not (KILL_MOMENTS[moment](out) or proc.poll() is not None):
            assert time.monotonic() < deadline, f"waited {timeout_s} s for the {moment}"
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    tail = log.read_text(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"`bon train {method}` ended ({proc.returncode}) before the {moment}:" \
                                               f"\n{tail}"
    assert run_state(out).is_file(), f"`bon train {method}` left no resume state:\n{tail}"
    return KilledRun(step=json.loads(run_state(out).read_text())["step"], listed=registry_view(out.parent),
                     half_written=checkpoint_being_written(out))


def train_watching_registry(train: Callable[[], object], root: Path) -> None:
    """`train()` while the registry lists `root` every 50 ms; fails if it ever lists a checkpoint that does not
    validate (a half-written one)."""
    with Sampler(lambda: float(sum(not valid for valid in registry_view(root).values())), every_s=0.05) as watch:
        train()
    assert watch.readings and watch.peak() == 0, "the registry listed a checkpoint that does not validate"


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    """The two checkpoints hold the same tensors, equal within `atol`."""
    mine, theirs = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(mine[name], value, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
