"""The `bon` command. Subcommands import their modules lazily, so `bon serve` never loads a trainer.

Every subcommand that reports figures takes `--json` and then prints them as one JSON object on stdout
(progress bars and logs go to stderr).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.cli import add_field_flag


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field (the config's documentation), by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for field, after in zip(body, body[1:], strict=False):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def _field_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One `--flag` per dataclass field (nested dataclasses get a prefix), with the field's docstring as help."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            _field_flags(parser, kind, prefix=f"{name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else "computed"
        add_field_flag(parser, name, kind, f"{docs.get(f.name, '')} (default: {default})")


def _build_config(cls: type, args: argparse.Namespace, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _build_config(hints[f.name], args, prefix=f"{name}.")
        elif getattr(args, name, None) is not None:
            values[f.name] = getattr(args, name)
    return cls(**values)


def _emit(args: argparse.Namespace, figures: dict[str, Any], human: Callable[[dict[str, Any]], str]) -> None:
    if args.json:
        print(json.dumps(figures, default=str))
    else:
        print(human(figures))


def _summary(figures: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in figures.items() if not isinstance(v, list | dict)) + (
        "\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in figures.items() if isinstance(v, dict))
    )


def _train(args: argparse.Namespace) -> None:
    from training.registry import TRAINERS

    config_cls, train = TRAINERS[args.method]()
    manifest = train(_build_config(config_cls, args))
    if manifest is not None:
        _emit(args, {"version": manifest.version, "method": manifest.method, **manifest.figures}, _summary)


def _eval_policy(args: argparse.Namespace) -> None:
    import world
    from training.evaluate import evaluate_policy, load_policy

    model, tokenizer = load_policy(args.checkpoint)
    prompts = world.prompts(args.split, args.prompts, args.seed)
    report = evaluate_policy(model, tokenizer, prompts, k=args.k, temperature=args.temperature, seed=args.seed)
    report["checkpoint"] = str(args.checkpoint)
    _emit(args, report, _summary)


def _eval_compare(args: argparse.Namespace) -> None:
    from evaluation.compare import compare
    from evaluation.compare_config import CompareConfig
    from evaluation.plots import format_summary

    try:
        cfg = _build_config(CompareConfig, args)
    except ValueError as exc:
        raise SystemExit(f"bon eval compare: {exc}") from None
    _emit(args, compare(cfg), format_summary)


def _build_default(args: argparse.Namespace) -> None:
    from training.build_default import build_default

    report = build_default(with_tuned=args.with_tuned, force=args.force)
    _emit(args, report, _summary)


def _loadtest(args: argparse.Namespace) -> None:
    from loadtest import run_cli
    from loadtest.report import format_table

    _emit(args, run_cli(args), format_table)


def _bench(args: argparse.Namespace) -> None:
    from bench.config import BenchConfig
    from bench.report import format_report
    from bench.run import run_bench

    try:
        cfg = _build_config(BenchConfig, args)
    except ValueError as exc:
        raise SystemExit(f"bon bench: {exc}") from None
    summary = run_bench(cfg)
    if args.json:  # the JSON object alone on stdout; the report still reaches a reader
        print(format_report(summary), file=sys.stderr)
    _emit(args, summary, format_report)


def _serve(args: argparse.Namespace) -> None:
    from server.cli import serve

    serve(args)


def _checkpoints(args: argparse.Namespace) -> None:
    """One admin API call against a running server; its error message and exit status 1 when refused."""
    import httpx

    method, path, body = args.route(args)
    headers = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body, headers=headers,
                                 timeout=args.timeout)
    except httpx.TransportError as exc:
        raise SystemExit(f"bon checkpoints: cannot reach {args.url}: {exc}") from None
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise SystemExit(f"bon checkpoints {args.action}: {response.status_code} {error.get('code') or ''}: "
                         f"{error.get('message') or response.text}")
    _emit(args, data, _checkpoints_text)


def _checkpoints_text(data: dict[str, Any]) -> str:
    if data.get("object") == "list":
        rows = [f"{c['name']:<28} {c['kind'] or '?':<7} {c['method'] or '?':<5} {c['version'] or '-':<16} "
                f"{c['created_iso'] or '-':<21} {'' if c['valid'] is None else 'ok' if c['valid'] else 'INVALID'}"
                f"{' ' + json.dumps(c['figures']) if c['figures'] else ''}{' ' + c['error'] if c['error'] else ''}"
                for c in data["data"]]
        return "\n".join([f"checkpoints under {data['root']}:", *rows])
    if data.get("object") == "swap":
        t = data["timings"]
        return (f"{data['name']}: {data['previous_version']} -> {data['version']} in {t['total_seconds']:.2f}s "
                f"(validate {t['validate_seconds']:.2f}s, load {t['load_seconds']:.2f}s, warm-up "
                f"{t['warmup_seconds']:.2f}s); {data['previous_in_flight']} requests still finishing on the old one")
    return json.dumps(data, indent=2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bon")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    from training.registry import TRAINERS

    parser = argparse.ArgumentParser(prog="bon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"bon {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a checkpoint").add_subparsers(dest="method", required=True)
    for method, factory in TRAINERS.items():
        p = train.add_parser(method, help=f"train the {method} checkpoint")
        _field_flags(p, factory()[0])
        p.add_argument("--json", action="store_true", help="print the final figures as one JSON object")
        p.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate checkpoints").add_subparsers(dest="what", required=True)
    pol = ev.add_parser("policy", help="gold reward, flaw rates and well-formed rate of a policy")
    pol.add_argument("checkpoint", type=Path)
    pol.add_argument("--prompts", type=int, default=250, help="held-out prompts")
    pol.add_argument("-k", type=int, default=4, help="answers sampled per prompt")
    pol.add_argument("--temperature", type=float, default=1.0)
    pol.add_argument("--split", choices=["validation", "test"], default="test")
    pol.add_argument("--seed", type=int, default=0)
    pol.add_argument("--json", action="store_true")
    pol.set_defaults(func=_eval_policy)

    from evaluation.compare_config import CompareConfig

    cmp = ev.add_parser("compare", help="Best-of-N on SFT vs DPO and PPO: gold and proxy reward, KL, win rate, "
                        "latency and cost through the server; writes report.md, results.json and plots to --out")
    _field_flags(cmp, CompareConfig)
    cmp.add_argument("--json", action="store_true", help="print results.json's object on stdout")
    cmp.set_defaults(func=_eval_compare)

    bd = sub.add_parser("build-default", help="build the embedded default checkpoints that are missing")
    bd.add_argument("--with-tuned", action="store_true", help="also DPO and PPO")
    bd.add_argument("--force", action="store_true", help="rebuild even when present")
    bd.add_argument("--json", action="store_true")
    bd.set_defaults(func=_build_default)

    from loadtest.cli import add_arguments

    lt = sub.add_parser("loadtest", help="load-test any OpenAI-compatible server: latency, throughput, cost vs N")
    add_arguments(lt)
    lt.set_defaults(func=_loadtest)

    from bench.config import BenchConfig

    bench = sub.add_parser("bench", help="Best-of-N latency against naive transformers and vLLM's n=N, throughput "
                           "and memory; writes JSON and a plot to --out")
    _field_flags(bench, BenchConfig)
    bench.add_argument("--json", action="store_true", help="print the results' JSON object on stdout")
    bench.set_defaults(func=_bench)

    from server.cli import add_arguments as add_serve_arguments

    sv = sub.add_parser("serve", help="serve Best-of-N over an OpenAI-compatible HTTP API")
    add_serve_arguments(sv)
    sv.set_defaults(func=_serve)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("BON_URL", "http://127.0.0.1:8000"),
                        help="the running server ($BON_URL)")
    common.add_argument("--admin-key", default=os.environ.get("BON_ADMIN_KEY"), help="its admin key ($BON_ADMIN_KEY)")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a load")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    ck = sub.add_parser("checkpoints", help="list, load, swap, unload and roll back checkpoints on a running "
                        "server (its admin API)").add_subparsers(dest="action", required=True)
    ls = ck.add_parser("list", parents=[common], help="checkpoints under the server's root, with their manifests")
    ls.add_argument("--verify", action="store_true", help="also check every hash (slow for large checkpoints)")
    ls.set_defaults(route=lambda a: ("GET", "/admin/checkpoints" + ("?verify=true" if a.verify else ""), None))
    ck.add_parser("status", parents=[common], help="what is served now, with versions and history") \
        .set_defaults(route=lambda a: ("GET", "/admin/models", None))
    load = ck.add_parser("load", parents=[common], help="load CHECKPOINT as policy NAME (new or swapped)")
    load.add_argument("name")
    load.add_argument("checkpoint", help="a directory under the server's checkpoint root")
    load.add_argument("--best-of", type=int, help="the policy's default best_of")
    load.set_defaults(route=lambda a: ("POST", f"/admin/policies/{a.name}",
                                       {"checkpoint": a.checkpoint, "best_of": a.best_of}))
    best = ck.add_parser("best-of", parents=[common], help="set policy NAME's default best_of")
    best.add_argument("name")
    best.add_argument("n", type=int)
    best.set_defaults(route=lambda a: ("PATCH", f"/admin/policies/{a.name}", {"best_of": a.n}))
    unload = ck.add_parser("unload", parents=[common], help="stop serving policy NAME")
    unload.add_argument("name")
    unload.set_defaults(route=lambda a: ("DELETE", f"/admin/policies/{a.name}", None))
    back = ck.add_parser("rollback", parents=[common], help="serve policy NAME's previous version again")
    back.add_argument("name")
    back.set_defaults(route=lambda a: ("POST", f"/admin/policies/{a.name}/rollback", None))
    reward = ck.add_parser("reward", parents=[common], help="swap the reward model for CHECKPOINT")
    reward.add_argument("checkpoint", help="a directory under the server's checkpoint root")
    reward.set_defaults(route=lambda a: ("POST", "/admin/reward", {"checkpoint": a.checkpoint}))
    ck.add_parser("rollback-reward", parents=[common], help="serve the previous reward model again") \
        .set_defaults(route=lambda a: ("POST", "/admin/reward/rollback", None))
    for action in ck.choices.values():
        action.set_defaults(func=_checkpoints)
    return parser


def main(argv: list[str] | None = None) -> None:
    from server.settings import ConfigError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except ConfigError as exc:
        raise SystemExit(f"bon {args.command}: {exc}") from None


if __name__ == "__main__":
    main()
