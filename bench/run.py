"""One benchmark run: the five targets on the same prompts, interleaved, then throughput and memory, then the
figures and files.

Every target is made ready first (models loaded in process, servers started side by side and waited for). Then
for each N, every target answers its warm-up requests, and repeat i of every target runs in turn before repeat
i + 1 of any: the repeats that a ratio pairs run seconds apart, so a change in the machine's load over the run
falls on both sides alike. One request runs at a time; the servers not being timed sit idle.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import torch
from tqdm import tqdm

from bench import http
from bench.config import TARGETS, BenchConfig
from bench.naive import NaiveBestOfN
from bench.pipeline import InProcessPipeline, request_body
from bench.report import summarize, write_results
from bench.stats import Timing, point
from common.servers import Server
from loadtest.prompts import Messages, from_world
from models.interface import RewardSpec
from models.loader import load_reward

log = logging.getLogger(__name__)

Measure = Callable[[Messages, int, int], Timing]
"""A target: (messages, N, seed) -> one timed Best-of-N request."""
SERVED = ("c", "d", "e")
"""The targets answered by a server process, which may fail to start or die: that fails their row alone."""


def _failed(exc: BaseException) -> dict[str, Any]:
    log.error("%s", exc, exc_info=exc)
    why = f"{type(exc).__name__}: {exc}"  # a server that did not start quotes the end of its log
    return {"status": "failed", "why": why if len(why) <= 2000 else f"{why[:500]} … {why[-1500:]}"}


def sweep(measures: dict[str, Measure], cfg: BenchConfig, prompts: list[Messages]) -> dict[str, dict[str, Any]]:
    """Every N on every target, interleaved repeat by repeat; repeat i is prompt i with seed + i on every target,
    warm-ups are prompt 0 with the seed. A served target whose server fails stops there, failed."""
    live, out = dict(measures), {}
    timings: dict[str, dict[int, list[Timing]]] = {letter: {} for letter in measures}
    with tqdm(total=len(cfg.best_of) * (cfg.warmup + cfg.repeats) * len(measures), unit="req", dynamic_ncols=True,
              desc=f"targets {','.join(measures)}") as bar:
        for n in cfg.best_of:
            for i in range(-cfg.warmup, cfg.repeats):
                prompt, seed = (prompts[0], cfg.seed) if i < 0 else (prompts[i % len(prompts)], cfg.seed + i)
                for letter, measure in list(live.items()):
                    bar.set_postfix_str(f"({letter}) best_of {n}", refresh=False)
                    try:
                        timing = measure(prompt, n, seed)
                    except (http.BadAnswer, httpx.HTTPError) as exc:
                        out[letter] = _failed(exc)
                        del live[letter]
                        continue
                    finally:
                        bar.update()
                    if i >= 0:
                        timings[letter].setdefault(n, []).append(timing)
    for letter in live:
        out[letter] = {"status": "ok", "points": {str(n): point(t) for n, t in timings[letter].items()}}
    return out


def _machine() -> dict[str, Any]:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
            "transformers": installed("transformers"), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": "cpu",
            "load_average_start": list(os.getloadavg())}


def _start_servers(cfg: BenchConfig, stack: ExitStack, logs: Path, targets: dict[str, Any],
                   vllm: str | None, why_not: str) -> dict[str, Server]:
    """The servers of targets c, d and e that the run asks for, started side by side, each ready or failed."""
    commands = {"c": http.bon_serve(cfg, "hf"), "d": http.bon_serve(cfg, "vllm"), "e": http.vllm_serve(cfg)}
    started = {}
    for letter in SERVED:
        if not cfg.runs(letter):
            continue
        if letter != "c" and vllm is None:
            targets[letter] = {"status": "skipped", "why": why_not}
            continue
        started[letter] = http.launch(commands[letter], logs)
        stack.callback(started[letter].stop)
    ready = {}
    for letter, server in started.items():
        try:
            ready[letter] = server.wait("/v1/models" if letter == "e" else "/ready", cfg.server_timeout)
        except RuntimeError as exc:
            targets[letter] = _failed(exc)
    return ready


def _measures(cfg: BenchConfig, stack: ExitStack, client: httpx.Client,
              servers: dict[str, Server]) -> dict[str, Measure]:
    """Every target that is ready, in the order a-e."""
    measures: dict[str, Measure] = {}
    if cfg.runs("a"):
        measures["a"] = NaiveBestOfN(cfg.policy, cfg.rm, cfg.max_tokens, cfg.temperature)
    if cfg.runs("b"):
        pipeline = stack.enter_context(InProcessPipeline(http.bon_settings(cfg)))
        measures["b"] = lambda m, n, seed: pipeline(request_body(m, n, seed, cfg.max_tokens, cfg.temperature))
    for letter in ("c", "d"):
        if letter in servers:
            measures[letter] = http.BonOverHTTP(client, servers[letter].url, cfg)
    if "e" in servers:
        reward = load_reward(RewardSpec(backend="hf", path=cfg.rm))
        stack.callback(reward.close)
        measures["e"] = http.PeerBestOfN(client, servers["e"].url, cfg, reward)
    return measures


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark `cfg` describes, write its JSON and plot under `cfg.out`, and return the JSON's object."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    prompts = from_world(cfg.repeats, cfg.seed)
    results: dict[str, Any] = {"machine": _machine(), "throughput": {}, "memory": None,
                               "targets": {letter: {"status": "skipped", "why": "--skip"} for letter in TARGETS}}
    targets = results["targets"]
    vllm, why_not = http.vllm_version() if cfg.runs("d") or cfg.runs("e") else (None, "")
    results["machine"]["vllm"] = vllm
    with tempfile.TemporaryDirectory(prefix="bon-bench-") as logs, ExitStack() as stack, \
            httpx.Client(timeout=cfg.server_timeout) as client:
        servers = _start_servers(cfg, stack, Path(logs), targets, vllm, why_not)
        targets |= sweep(_measures(cfg, stack, client, servers), cfg, prompts)
        # Each server alone at work (the others idle) for what needs many requests at once.
        for letter in ("c", "d"):
            if targets[letter]["status"] == "ok" and cfg.runs("throughput"):
                results["throughput"][letter] = http.throughput(cfg, servers[letter].url, prompts)
        if targets["c"]["status"] == "ok" and cfg.runs("memory"):
            results["memory"] = (http.memory(cfg, servers["c"], prompts) if Path("/proc/self/status").exists()
                                 else {"status": "skipped", "why": "no /proc on this system"})
    results["machine"]["load_average_end"] = list(os.getloadavg())
    summary = summarize(cfg, started, results)
    write_results(summary, cfg.out)
    return summary
