"""Best-of-N on a GPU at a realistic shape: bon's vLLM backend with a reward model of a billion parameters, against
vLLM alone, and each decode step against the memory-bandwidth floor.

    python -m bench.gpu --out DIR                  (a GPU: a 6.7B Llama policy, a 1.1B Llama reward model)
    python -m bench.gpu --out DIR --shape tiny     (the same run on tiny models: vLLM's CPU build, in minutes)

The weights are random. The policy is a Llama `config.json` of Llama-2-7B's shape (hidden 4096, 32 layers, 32
heads, MLP 11008, vocabulary 32000: 6.74B parameters) beside a tokenizer, and vLLM fills it with random weights
(`load_format: dummy`), so no weight file is written or moved. The reward model is a Llama sequence classifier
of TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads sharing 4 KV heads, MLP 5632), initialised at random
and written as a bon checkpoint. The tokenizer is the shipped policy's, its vocabulary padded with plain tokens
to the models' 32000, so that every id the random policy samples decodes to text.

For each N, `--repeats` requests after one untimed one, each on its own prompt of the world's test split, every
candidate `--max-tokens` long (ignore_eos), at temperature 1:
- bon: `bon serve --policy-backend vllm`, the reward model in process on the device, best_of=N; its own timings
  split the sampling from the scoring;
- vLLM n=N: vLLM's OpenAI server of the same policy and engine settings, one request with n=N;
- vLLM N × n=1: N requests with n=1 sent together to the same server.
Then the decode step at a few N: vLLM n=N at `--max-tokens` and at `STEP_BASE_TOKENS`, (t_T - t_8) / (T - 8), so
that the prefill and the request's fixed costs cancel out. Its floor is what one step must read, the weights
and the KV cache of the N sequences at their mean length, over the device's memory bandwidth, measured here by
copying a buffer.

The results (JSON, written atomically) go to `<out>/results.json` beside the servers' logs, and the table to
standard output; the models go to `--work` (`<out>/models` by default: the reward model is 2.2 GB on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from bench.http import launch, vllm_version
from common.cli import positive_ints, script_logging
from common.files import write_atomic
from common.servers import BON_SERVE, VLLM_SERVE, Server
from loadtest.prompts import Messages, from_world
from models.checkpoint import checkpoint_root, write_checkpoint

log = logging.getLogger("bench.gpu")

POLICY = "policy"
"""The name both servers serve the policy under."""
VOCAB = 32000


@dataclass(frozen=True)
class Shape:
    """A Llama decoder's shape."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def config(self, dtype: torch.dtype, pad_id: int, bos_id: int, eos_id: int, **extra: Any) -> LlamaConfig:
        return LlamaConfig(vocab_size=VOCAB, hidden_size=self.hidden, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           intermediate_size=self.mlp, max_position_embeddings=2048, tie_word_embeddings=False,
                           pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, dtype=dtype, **extra)

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of keys and values one token holds in the KV cache, over every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype.itemsize


SHAPES = {
    "6.7b": (Shape(hidden=4096, layers=32, heads=32, kv_heads=32, mlp=11008),
             Shape(hidden=2048, layers=22, heads=32, kv_heads=4, mlp=5632)),
    "tiny": (Shape(hidden=64, layers=2, heads=2, kv_heads=2, mlp=128),
             Shape(hidden=64, layers=2, heads=2, kv_heads=2, mlp=128)),
}
"""Policy and reward model by `--shape`: Llama-2-7B and TinyLlama-1.1B, or two layers of 64 for a rehearsal."""
STEP_BASE_TOKENS = 8
"""The short request the decode step is measured against."""


@dataclass
class GpuBenchConfig:
    out: Path
    work: Path | None = None
    """Where the models are written (default `<out>/models`)."""
    shape: str = "6.7b"
    device: str = "cuda"
    best_of: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    step_best_of: tuple[int, ...] = (1, 16, 64)
    """N at which the decode step is measured against its floor."""
    repeats: int = 5
    max_tokens: int = 128
    gpu_memory_utilization: float = 0.4
    """Each vLLM engine's share of the GPU (two run side by side, beside the reward model)."""
    kv_cache_bytes: int = 256 << 20
    """Each engine's KV cache on a CPU (vLLM's CPU build would otherwise take a share of the machine's RAM)."""
    server_timeout: float = 900.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape: one of {', '.join(SHAPES)}")
        self.best_of, self.step_best_of = positive_ints(self.best_of), positive_ints(self.step_best_of)
        if self.repeats < 1 or self.max_tokens <= STEP_BASE_TOKENS:
            raise ValueError(f"repeats must be at least 1 and max_tokens over {STEP_BASE_TOKENS}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.on_gpu else torch.float32


# ---------------------------------------------------------------------------------------------------------
# The models


def padded_tokenizer(source: Path, vocab: int = VOCAB) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer at `source` with plain tokens `<w0>`, `<w1>`, ... added up to `vocab` entries."""
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, local_files_only=True)
    missing = vocab - len(tokenizer)
    if missing < 0:
        raise ValueError(f"{source}: the tokenizer has {len(tokenizer)} entries, over {vocab}")
    tokenizer.add_tokens([f"<w{i}>" for i in range(missing)])
    return tokenizer


def parameter_count(config: LlamaConfig) -> int:
    """Parameters of a causal LM of `config`, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def write_random_rm(out: Path, config: LlamaConfig, tokenizer: transformers.PreTrainedTokenizerBase,
                    cfg: GpuBenchConfig) -> int:
    """A Llama sequence classifier of `config` with random weights, written as a bon checkpoint; its parameters."""
    torch.manual_seed(cfg.seed)
    with torch.device(cfg.device):
        rm = LlamaForSequenceClassification(config).to(cfg.dtype)

    def save(tmp: Path) -> None:
        rm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    write_checkpoint(out, save, kind="reward", method="random-init", hyperparameters={"seed": cfg.seed})
    return sum(p.numel() for p in rm.parameters())


def build_models(cfg: GpuBenchConfig, work: Path) -> dict[str, Any]:
    """The policy (config and tokenizer, for vLLM's dummy loader) and the reward model (random weights, a bon
    checkpoint) under `work`; what they are."""
    policy_shape, rm_shape = SHAPES[cfg.shape]
    tokenizer = padded_tokenizer(checkpoint_root() / "sft")
    ids = {"pad_id": tokenizer.pad_token_id, "bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id}
    policy_dir = work / "policy"
    policy_config = policy_shape.config(cfg.dtype, **ids)
    policy_config.save_pretrained(str(policy_dir))
    tokenizer.save_pretrained(str(policy_dir))

    rm_parameters = write_random_rm(work / "rm", rm_shape.config(cfg.dtype, **ids, num_labels=1), tokenizer, cfg)
    if cfg.on_gpu:
        torch.cuda.empty_cache()  # the RM's copy here is gone: the servers get the whole device
    return {"policy": {"path": str(policy_dir), "shape": asdict(policy_shape), "vocab": VOCAB,
                       "parameters": parameter_count(policy_config), "weights": "random (vLLM load_format=dummy)"},
            "rm": {"path": str(work / "rm"), "shape": asdict(rm_shape), "vocab": VOCAB, "parameters": rm_parameters,
                   "weights": "random (torch init), bon checkpoint"},
            "dtype": str(cfg.dtype).removeprefix("torch."), "tokenizer_entries": len(tokenizer)}


# ---------------------------------------------------------------------------------------------------------
# The servers


def _engine_flags(cfg: GpuBenchConfig) -> dict[str, Any]:
    """vLLM engine settings of both servers (as AsyncEngineArgs fields)."""
    flags: dict[str, Any] = {"load_format": "dummy", "max_model_len": 1024, "enable_prefix_caching": True,
                             "dtype": str(cfg.dtype).removeprefix("torch.")}
    if cfg.on_gpu:
        return flags | {"gpu_memory_utilization": cfg.gpu_memory_utilization}
    return flags | {"enforce_eager": True, "kv_cache_memory_bytes": cfg.kv_cache_bytes}


def bon_command(cfg: GpuBenchConfig, models: dict[str, Any]) -> list[str]:
    """bon's server of both models; the decode steps are vLLM's alone, so its largest best_of is the points'."""
    return [*BON_SERVE, "--policy", f"{POLICY}={models['policy']['path']}", "--reward", models["rm"]["path"],
            "--policy-backend", "vllm", "--vllm-engine-args", json.dumps(_engine_flags(cfg)), "--device",
            cfg.device, "--max-best-of", str(max(cfg.best_of)), "--max-tokens", str(cfg.max_tokens),
            "--default-max-tokens", str(cfg.max_tokens), "--log-level", "warning"]


def vllm_command(cfg: GpuBenchConfig, models: dict[str, Any]) -> list[str]:
    command = [*VLLM_SERVE, "--model", models["policy"]["path"], "--served-model-name", POLICY, "--host", "127.0.0.1",
               "--uvicorn-log-level", "warning"]
    for name, value in _engine_flags(cfg).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        else:
            command += [flag, str(value)]
    return command


# ---------------------------------------------------------------------------------------------------------
# Timing


def _body(model: str, messages: Messages, max_tokens: int, seed: int, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "ignore_eos": True, **fields}


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return seconds, response.json()


async def _bon(client: httpx.AsyncClient, url: str, messages: Messages, n: int, tokens: int,
               seed: int) -> dict[str, float]:
    seconds, answer = await _post(client, url, _body(POLICY, messages, tokens, seed, best_of=n))
    t = answer["bon"]["timings"]
    return {"latency_s": seconds, "sample_s": t["sample_seconds"], "score_s": t["score_seconds"],
            "prompt_tokens": answer["usage"]["prompt_tokens"]}


async def _vllm_n(client: httpx.AsyncClient, url: str, messages: Messages, n: int, tokens: int,
                  seed: int) -> dict[str, float]:
    seconds, answer = await _post(client, url, _body(POLICY, messages, tokens, seed, n=n))
    if len(answer["choices"]) != n or answer["usage"]["completion_tokens"] != n * tokens:
        raise RuntimeError(f"vLLM returned {len(answer['choices'])} choices, {answer['usage']} for n={n}")
    return {"latency_s": seconds, "prompt_tokens": answer["usage"]["prompt_tokens"]}


async def _vllm_separate(client: httpx.AsyncClient, url: str, messages: Messages, n: int, tokens: int,
                         seed: int) -> dict[str, float]:
    started = time.perf_counter()
    await asyncio.gather(*(_post(client, url, _body(POLICY, messages, tokens, seed + k)) for k in range(n)))
    return {"latency_s": time.perf_counter() - started}


def _medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{key}_p50": statistics.median(r[key] for r in runs) for key in runs[0]}
    out["latency_s_runs"] = [round(r["latency_s"], 5) for r in runs]
    return out


async def _point(client: httpx.AsyncClient, measure: Any, url: str, prompts: list[Messages], n: int, tokens: int,
                 seed: int) -> dict[str, Any]:
    """One untimed request, then one per prompt; their medians."""
    await measure(client, url, prompts[-1], n, tokens, seed)
    return _medians([await measure(client, url, m, n, tokens, seed + 1 + k) for k, m in enumerate(prompts[:-1])])


async def measure(cfg: GpuBenchConfig, bon: str, vllm: str, prompts: list[Messages]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=cfg.server_timeout,
                                 limits=httpx.Limits(max_connections=2 * max(cfg.best_of))) as client:
        points = []
        for n in cfg.best_of:
            log.info("best_of=%d", n)
            points.append({"best_of": n, "bon": await _point(client, _bon, bon, prompts, n, cfg.max_tokens, cfg.seed),
                           "vllm_n": await _point(client, _vllm_n, vllm, prompts, n, cfg.max_tokens, cfg.seed),
                           "vllm_separate": await _point(client, _vllm_separate, vllm, prompts, n, cfg.max_tokens,
                                                         cfg.seed)})
        steps = []
        for n in cfg.step_best_of:
            log.info("decode step at n=%d", n)
            long = await _point(client, _vllm_n, vllm, prompts, n, cfg.max_tokens, cfg.seed)
            short = await _point(client, _vllm_n, vllm, prompts, n, STEP_BASE_TOKENS, cfg.seed)
            steps.append({"n": n, "long_s_p50": long["latency_s_p50"], "short_s_p50": short["latency_s_p50"],
                          "prompt_tokens_p50": long["prompt_tokens_p50"],
                          "step_s": (long["latency_s_p50"] - short["latency_s_p50"])
                          / (cfg.max_tokens - STEP_BASE_TOKENS)})
    return {"points": points, "steps": steps}


def memory_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second that copying a buffer of `nbytes` on `device` reads and writes, at best of `repeats`."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up
        sync()
        started = time.perf_counter()
        target.copy_(source)
        sync()
        best = min(best, time.perf_counter() - started)
    del source, target
    return 2 * nbytes / best


def with_floors(steps: list[dict[str, Any]], models: dict[str, Any], shape: Shape, dtype: torch.dtype,
                bandwidth: float, max_tokens: int) -> list[dict[str, Any]]:
    """Each decode step beside its floor: the weights and the KV cache of n sequences at their mean length during
    the decode (the prompt and half the new tokens), read once, at `bandwidth`."""
    weight_bytes = models["policy"]["parameters"] * dtype.itemsize
    out = []
    for step in steps:
        context = step["prompt_tokens_p50"] + max_tokens / 2
        kv_bytes = step["n"] * context * shape.kv_bytes_per_token(dtype)
        floor = (weight_bytes + kv_bytes) / bandwidth
        out.append({**step, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "floor_s": floor,
                    "over_floor": step["step_s"] / floor})
    return out


# ---------------------------------------------------------------------------------------------------------
# The run


def summarize(points: list[dict[str, Any]], goal_n: int = 16) -> dict[str, Any]:
    """The issue's three ratios at best_of=`goal_n`, from the points' medians."""
    by_n = {p["best_of"]: p for p in points}
    if goal_n not in by_n or 1 not in by_n:
        return {"status": "skipped", "why": f"needs best_of 1 and {goal_n}"}
    goal, one = by_n[goal_n], by_n[1]
    bon, vllm_n = goal["bon"], goal["vllm_n"]
    return {
        "best_of": goal_n,
        "bon_over_vllm_n1": bon["latency_s_p50"] / one["vllm_n"]["latency_s_p50"],
        "score_share": bon["score_s_p50"] / bon["latency_s_p50"],
        "bon_over_vllm_n": bon["latency_s_p50"] / vllm_n["latency_s_p50"],
        "bon_without_scoring_over_vllm_n": (bon["latency_s_p50"] - bon["score_s_p50"]) / vllm_n["latency_s_p50"],
        "vllm_separate_over_vllm_n": goal["vllm_separate"]["latency_s_p50"] / vllm_n["latency_s_p50"],
        "targets": {"bon_over_vllm_n1": 1.3, "score_share": 0.10, "bon_over_vllm_n": 1.05},
    }


def _machine(cfg: GpuBenchConfig) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(cfg.device) if cfg.on_gpu else None
    return {"device": cfg.device, "gpu": gpu, "cuda": torch.version.cuda if cfg.on_gpu else None,
            "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": vllm_version()[0]}


def run(cfg: GpuBenchConfig) -> dict[str, Any]:
    """Build the models, start both servers, time them; the results, written under `cfg.out`."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cfg.out.mkdir(parents=True, exist_ok=True)
    machine = _machine(cfg)
    if machine["vllm"] is None:
        raise RuntimeError(f"vLLM does not import here: {vllm_version()[1]}")
    bandwidth = memory_bandwidth(cfg.device)
    log.info("memory bandwidth %.0f GB/s", bandwidth / 1e9)
    models = build_models(cfg, cfg.work or cfg.out / "models")
    logs = cfg.out / "logs"
    logs.mkdir(exist_ok=True)
    prompts = from_world(cfg.repeats + 1, cfg.seed)
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name, command in (("bon", bon_command(cfg, models)), ("vllm", vllm_command(cfg, models))):
            servers[name] = launch(command, logs)
            stack.callback(servers[name].stop)
        ready_at = time.perf_counter()
        servers["bon"].wait("/ready", cfg.server_timeout)
        servers["vllm"].wait("/v1/models", cfg.server_timeout)
        startup_s = time.perf_counter() - ready_at
        timed = asyncio.run(measure(cfg, servers["bon"].url, servers["vllm"].url, prompts))
    results = {"started": started, "machine": machine,
               "config": {**asdict(cfg), "out": str(cfg.out), "work": str(cfg.work) if cfg.work else None},
               "models": models, "servers_ready_s": round(startup_s, 1), "engine": _engine_flags(cfg),
               "memory_bandwidth_bytes_per_s": bandwidth, "points": timed["points"],
               "decode_steps": with_floors(timed["steps"], models, SHAPES[cfg.shape][0], cfg.dtype, bandwidth,
                                           cfg.max_tokens),
               "summary": summarize(timed["points"])}
    write_atomic(cfg.out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict[str, Any]) -> str:
    """The latency-vs-N table, the decode steps against their floor, and the summary, as text."""
    lines = ["N | bon p50 s (score s) | vLLM n=N p50 s | vLLM N x n=1 p50 s | bon / vLLM n=N"]
    for p in results["points"]:
        bon, n, separate = p["bon"], p["vllm_n"], p["vllm_separate"]
        lines.append(f"{p['best_of']} | {bon['latency_s_p50']:.4f} ({bon['score_s_p50']:.4f}) | "
                     f"{n['latency_s_p50']:.4f} | {separate['latency_s_p50']:.4f} | "
                     f"{bon['latency_s_p50'] / n['latency_s_p50']:.3f}")
    lines.append("n | decode step ms | floor ms | over floor")
    for s in results["decode_steps"]:
        lines.append(f"{s['n']} | {1e3 * s['step_s']:.3f} | {1e3 * s['floor_s']:.3f} | {s['over_floor']:.2f}")
    lines.append(json.dumps(results["summary"]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> GpuBenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory of the results, the models and the logs")
    p.add_argument("--work", type=Path, default=None, help="where the models are written (default OUT/models)")
    p.add_argument("--shape", choices=list(SHAPES), default="6.7b")
    p.add_argument("--device", default=None, help="torch device (default: cuda where there is one, else cpu)")
    p.add_argument("--best-of", default="1,2,4,8,16,32,64", help="N of the latency points, comma-separated")
    p.add_argument("--step-best-of", default="1,16,64", help="N of the decode-step points, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return GpuBenchConfig(out=args.out, work=args.work, shape=args.shape, device=device, best_of=args.best_of,
                              step_best_of=args.step_best_of, repeats=args.repeats, max_tokens=args.max_tokens,
                              gpu_memory_utilization=args.gpu_memory_utilization)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    script_logging()
    results = run(cfg)
    sys.stdout.write(table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
