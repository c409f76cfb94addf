"""Targets (c), (d) and (e), timed over HTTP against servers started as processes on free ports, and what only a
server process shows: requests per second under concurrency, and resident memory.

(c) and (d) are `bon serve` with the settings of the in-process pipeline (b), the hf and the vllm policy
backend. (e) is vLLM's own OpenAI server of the same policy checkpoint, asked for n=N; its N candidates are then
scored in one batch by the reward model in this process, timed apart so that (e) is reported with and without
that step. Both vLLM servers get the same engine settings: eager mode, prefix caching, the same KV cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import httpx
import torch

from bench.config import BenchConfig
from bench.pipeline import POLICY, request_body
from bench.stats import Timing
from common.servers import BON_SERVE, VLLM_SERVE, Server, free_port, start_server
from loadtest.prompts import Messages
from loadtest.runner import LoadConfig, Point, run_sweep
from loadtest.stats import summarize
from models.interface import RewardBackend

log = logging.getLogger(__name__)

SERVER_ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}


def server_env() -> dict[str, str]:
    """This process's environment for a server, with the thread count torch uses here: the servers compute with
    as many threads as the in-process targets."""
    return os.environ | SERVER_ENV | {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def bon_settings(cfg: BenchConfig) -> dict[str, Any]:
    """The settings of bon's pipeline, in process (b) and served (c, d): defaults but for the limits the run needs
    (every request names its best_of and max_tokens, so their defaults only need to stay within the limits)."""
    return {"policies": {POLICY: {"path": str(cfg.policy)}}, "reward": {"path": str(cfg.rm)},
            "max_best_of": cfg.largest_best_of, "default_best_of": 1,
            "max_tokens": max(cfg.max_tokens, cfg.leak_max_tokens), "default_max_tokens": cfg.max_tokens}


def serve_flags(settings: dict[str, Any]) -> list[str]:
    """`bon serve` flags that give `settings` (as `bon_settings` writes them)."""
    flags = [flag for name, policy in settings["policies"].items() for flag in ("--policy", f"{name}={policy['path']}")]
    flags += ["--reward", settings["reward"]["path"]]
    for name, value in settings.items():
        if name not in ("policies", "reward"):
            flags += [f"--{name.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


class BadAnswer(RuntimeError):
    """A server answered a benchmark request with an error status."""


def launch(command: Sequence[str], log_dir: Path) -> Server:
    """`command` started on a free port, its output to a log in `log_dir`; it returns at once (call `wait`)."""
    port = free_port()
    return start_server([*command, "--port", str(port)], f"http://127.0.0.1:{port}", log_dir / f"server-{port}.log",
                        env=server_env())


def bon_serve(cfg: BenchConfig, backend: Literal["hf", "vllm"]) -> list[str]:
    """`bon serve` of the benchmark's checkpoints with the given policy backend, with the settings of (b)."""
    settings = bon_settings(cfg)
    if backend == "vllm":
        settings |= {"policy_backend": "vllm", "vllm_engine_args": {
            "enforce_eager": True, "kv_cache_memory_bytes": cfg.vllm_kv_cache_bytes}}
    return [*BON_SERVE, *serve_flags(settings), "--log-level", "warning"]


def vllm_serve(cfg: BenchConfig) -> list[str]:
    """vLLM's own server of the benchmark's policy, its engine set as bon's vllm backend sets its own."""
    return [*VLLM_SERVE, "--model", str(cfg.policy), "--served-model-name", POLICY, "--enforce-eager",
            "--enable-prefix-caching", "--load-format", "safetensors", "--kv-cache-memory-bytes",
            str(cfg.vllm_kv_cache_bytes), "--host", "127.0.0.1"]


def vllm_version() -> tuple[str | None, str]:
    """vLLM's version when `import vllm` works in this Python, else None; and why not."""
    try:
        done = subprocess.run([sys.executable, "-c", "import sys, vllm; sys.stdout.write(vllm.__version__)"],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None, "`import vllm` took more than 300 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, (f"`import vllm` fails in {sys.executable} ({last}); run the benchmark from .venv-vllm "
                      "(make install-vllm)")
    return done.stdout.strip(), ""


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST a chat completion: seconds until its whole answer was read, and the answer."""
    started = time.perf_counter()
    response = client.post(url + "/v1/chat/completions", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise BadAnswer(f"{url} answered {response.status_code}: {response.text[:500]}")
    return seconds, response.json()


class BonOverHTTP:
    """Target (c) or (d): Best-of-N requests to `bon serve`, with bon's own timings read from the answers."""

    def __init__(self, client: httpx.Client, url: str, cfg: BenchConfig):
        self.client, self.url, self.cfg = client, url, cfg

    def __call__(self, messages: Messages, n: int, seed: int) -> Timing:
        body = request_body(messages, n, seed, self.cfg.max_tokens, self.cfg.temperature)
        seconds, answer = _post(self.client, self.url, body)
        bon = answer["bon"]
        t = bon["timings"]
        return Timing(latency_s=seconds, sample_s=t["sample_seconds"], score_s=t["score_seconds"],
                      tokens=bon["candidate_tokens"], total_s=t["total_seconds"])


class PeerBestOfN:
    """Target (e): one n=N request to vLLM's server, then the N answers scored in one reward-model batch here."""

    def __init__(self, client: httpx.Client, url: str, cfg: BenchConfig, reward: RewardBackend):
        self.client, self.url, self.cfg, self.reward = client, url, cfg, reward

    def __call__(self, messages: Messages, n: int, seed: int) -> Timing:
        body = {"model": POLICY, "messages": list(messages), "n": n, "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature, "seed": seed, "ignore_eos": True}
        seconds, answer = _post(self.client, self.url, body)
        texts = [c["message"]["content"] for c in sorted(answer["choices"], key=lambda c: c["index"])]
        started = time.perf_counter()
        self.reward.score_batch([(messages, text) for text in texts])
        scored = time.perf_counter() - started
        return Timing(latency_s=seconds + scored, sample_s=seconds, score_s=scored,
                      tokens=answer["usage"]["completion_tokens"])


def closed_loop(cfg: BenchConfig, url: str, prompts: list[Messages], best_of: int, concurrency: int,
                requests: int, max_tokens: int | None = None, warm: bool = True) -> dict[str, Any]:
    """`requests` Best-of-`best_of` requests from `concurrency` clients, each sending its next when answered
    (after one untimed round when `warm`); the load test's summary of them."""
    load = LoadConfig(url=url + "/v1/chat/completions", model=POLICY, prompts=prompts, stream=False,
                      max_tokens=max_tokens or cfg.max_tokens, temperature=cfg.temperature, ignore_eos=True,
                      requests=requests, duration=requests * cfg.server_timeout, timeout=cfg.server_timeout,
                      seed=cfg.seed)
    point = Point(best_of=best_of, concurrency=concurrency)
    if warm:
        asyncio.run(run_sweep(replace(load, requests=concurrency), [point], show_progress=False))
    (result,) = asyncio.run(run_sweep(load, [point], show_progress=False))
    summary = summarize(result.records, result.wall, slo=cfg.server_timeout)
    if summary["errors"]:
        log.warning("%s best_of=%d concurrency=%d: %d of %d requests failed: %s", url, best_of, concurrency,
                    summary["errors"], summary["sent"], summary["errors_by_status"])
    return summary


def throughput(cfg: BenchConfig, url: str, prompts: list[Messages]) -> dict[str, Any]:
    """Requests per second at `throughput_best_of` for each concurrency, and the last over the first."""
    points = {}
    for c in cfg.concurrency:
        s = closed_loop(cfg, url, prompts, cfg.throughput_best_of, c, cfg.throughput_requests)
        points[str(c)] = {"requests_per_s": s["throughput_rps"], "requests": s["sent"], "errors": s["errors"],
                          "wall_s": s["wall_s"], "latency_s_p50": s["latency_s_p50"]}
    first, last = points[str(cfg.concurrency[0])], points[str(cfg.concurrency[-1])]
    return {"best_of": cfg.throughput_best_of, "concurrency": points,
            "ratio": last["requests_per_s"] / first["requests_per_s"]}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc/<pid>/status (VmRSS now, VmHWM its peak), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) / 1024  # the kernel writes kB
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def memory(cfg: BenchConfig, server: Server, prompts: list[Messages]) -> dict[str, Any]:
    """The server's peak resident memory at `memory_best_of` × `memory_concurrency`, then its resident memory
    read every tenth of `leak_requests` requests."""
    pid = server.process.pid
    rss_before = rss_mib(pid)
    s = closed_loop(cfg, server.url, prompts, cfg.memory_best_of, cfg.memory_concurrency, cfg.memory_requests,
                    warm=False)
    peak = {"best_of": cfg.memory_best_of, "concurrency": cfg.memory_concurrency, "requests": s["sent"],
            "errors": s["errors"], "rss_before_mib": rss_before, "vm_hwm_mib": rss_mib(pid, "VmHWM")}
    readings, errors = [{"requests": 0, "rss_mib": rss_mib(pid)}], 0
    chunk = max(1, cfg.leak_requests // 10)
    while readings[-1]["requests"] < cfg.leak_requests:
        count = min(chunk, cfg.leak_requests - readings[-1]["requests"])
        s = closed_loop(cfg, server.url, prompts, cfg.leak_best_of, cfg.memory_concurrency, count,
                        cfg.leak_max_tokens, warm=False)
        errors += s["errors"]
        readings.append({"requests": readings[-1]["requests"] + count, "rss_mib": rss_mib(pid)})
    growth = {"best_of": cfg.leak_best_of, "max_tokens": cfg.leak_max_tokens, "concurrency": cfg.memory_concurrency,
              "requests": cfg.leak_requests, "errors": errors, "readings": readings,
              "growth_mib": readings[-1]["rss_mib"] - readings[0]["rss_mib"]}
    return {"pid": pid, "peak": peak, "growth": growth}
