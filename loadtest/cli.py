"""`bon loadtest`: the flags, and a run from flags to files. Imports here stay light, because `bon` builds every
subcommand's parser at start-up; the runner, numpy and matplotlib load only when a load test runs."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="server base URL (…, …/v1, or the full …/v1/chat/completions)")
    p.add_argument("--model", default=None, help="model field; default: the first id of GET /v1/models")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--mode", choices=["bon", "vllm-n"], default="bon",
                   help="bon: send best_of (our server reranks); vllm-n: send n=best_of (all candidates returned)")
    p.add_argument("--best-of", type=_ints, default=[1, 2, 4, 8, 16, 32], metavar="N,N,…",
                   help="best_of values to sweep (default 1,2,4,8,16,32)")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16], metavar="C,C,…",
                   help="closed loop: concurrent clients to sweep (default 1,4,16)")
    p.add_argument("--rate", type=_floats, default=None, metavar="R,R,…",
                   help="open loop instead: Poisson arrival rates (requests/s) to sweep")
    p.add_argument("--requests", type=int, default=50, help="requests per sweep point at most")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per sweep point at most (no new requests "
                   "after it; the ones in flight finish)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds, end to end")
    p.add_argument("--slo", type=float, default=2.0, help="latency target (s) for goodput")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="stream (SSE: measures TTFT and inter-token latency) or not")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ignore-eos", action="store_true",
                   help="sample past end-of-sequence up to --max-tokens (vLLM's field; bon serve takes it too): "
                   "every answer as long, so that two servers are compared on the same work")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--prompts", choices=["builtin", "world"], default="builtin",
                   help="built-in short prompts, or the embedded world's test split")
    p.add_argument("--prompts-file", type=Path, default=None,
                   help='JSONL with "prompt" or "messages" per line (overrides --prompts)')
    p.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON",
                   help='more request fields, e.g. \'{"return_candidates": true}\'')
    p.add_argument("--seed", type=int, default=0, help="prompt order and Poisson arrivals")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/loadtest-<timestamp>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--compare", nargs=2, default=None, metavar=("RUN", "RUN"),
                   help="send nothing: put two earlier runs side by side (their --out directories or summary.json, "
                   "NAME=PATH names one), e.g. bon serve against vllm serve with --mode vllm-n; writes compare.json "
                   "and compare_latency_vs_best_of.png to --out")


def chat_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _first_model(url: str, headers: dict[str, str], timeout: float) -> str:
    import httpx

    models_url = url.removesuffix("/chat/completions") + "/models"
    try:
        response = httpx.get(models_url, headers=headers, timeout=timeout)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SystemExit(f"bon loadtest: no model from GET {models_url} ({exc}); pass --model") from exc


def check_points(mode: str, points: list[dict[str, Any]]) -> list[str]:
    """What says the server did not do what the mode asked: an answer to best_of=N without our `bon` object (a
    plain vLLM server ignores best_of and samples once), or fewer or more than n choices at n=N."""
    warnings = []
    for p in points:
        if not p["answered"]:
            continue
        if mode == "bon" and p["best_of"] > 1 and not p["answers_with_extension"]:
            warnings.append(f"best_of={p['best_of']}: no answer carried the `bon` object, so the server may have "
                            "ignored best_of (plain vLLM does: drive it with --mode vllm-n)")
        elif mode == "vllm-n" and p["choices_per_answer"] != p["best_of"]:
            warnings.append(f"n={p['best_of']}: {p['choices_per_answer']:g} choices per answer, not {p['best_of']}")
    return warnings


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep the flags describe, write the files, and return the summary (what summary.json holds)."""
    import asyncio
    import logging
    import random

    if args.compare:
        from loadtest.compare import compare_runs

        return compare_runs(args.compare, args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")

    from loadtest import prompts
    from loadtest.report import point_fields, write_csv, write_json, write_plots
    from loadtest.runner import LoadConfig, run_sweep, sweep_points
    from loadtest.stats import summarize

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the progress bar
    url = chat_url(args.url)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or _first_model(url, headers, args.timeout)
    if args.prompts_file is not None:
        messages = prompts.from_file(args.prompts_file)
    elif args.prompts == "world":
        messages = prompts.from_world(max(args.requests, 16), args.seed)
    else:
        messages = prompts.builtin()
    random.Random(args.seed).shuffle(messages)

    config = LoadConfig(url=url, model=model, prompts=messages, mode=args.mode, stream=args.stream,
                        max_tokens=args.max_tokens, temperature=args.temperature, ignore_eos=args.ignore_eos,
                        requests=args.requests, duration=args.duration, timeout=args.timeout, headers=headers,
                        extra=args.extra_body, seed=args.seed)
    points = sweep_points(args.best_of, args.concurrency, args.rate)
    results = asyncio.run(run_sweep(config, points, show_progress=not args.no_progress))

    out = args.out or Path("runs") / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**point_fields(r.point), **summarize(r.records, r.wall, args.slo)} for r in results]
    warnings = check_points(args.mode, rows)
    for warning in warnings:
        logging.getLogger("loadtest").warning("%s", warning)
    summary: dict[str, Any] = {
        "config": {"url": url, "model": model, "mode": args.mode, "stream": args.stream,
                   "loop": "open" if args.rate else "closed", "best_of": args.best_of,
                   "concurrency": None if args.rate else args.concurrency, "rate": args.rate,
                   "requests": args.requests, "duration": args.duration, "timeout": args.timeout, "slo": args.slo,
                   "max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos, "temperature": args.temperature,
                   "prompts": len(messages), "extra_body": args.extra_body, "seed": args.seed,
                   "percentile_method": "linear interpolation (numpy 'linear', Hyndman-Fan type 7)"},
        "points": rows,
        "warnings": warnings,
        "out": str(out),
        "files": ["requests.csv", "summary.json", *(p.name for p in write_plots(rows, results, out))],
    }
    write_csv(results, out / "requests.csv")
    write_json(summary, out / "summary.json")
    return summary
