"""Two load-test runs side by side: `bon loadtest --compare RUN RUN`.

Made for our overhead over vLLM's own n=N: one run of `bon serve` (mode bon, best_of=N) and one of a plain
`vllm serve` of the same policy (mode vllm-n, n=N), at the same sweep points, prompts, max_tokens and ignore_eos.
Points are matched on (loop, concurrency, rate, best_of); each row gives both runs' latency percentiles and tokens,
and the first run's p50 over the second's. Nothing is sent: the runs' summary.json files are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.files import write_atomic
from loadtest.report import _load_label, log2_if_spread, png, write_json

METRICS = ("sent", "answered", "errors", "latency_s_p50", "latency_s_p90", "latency_s_p95", "latency_s_p99",
           "ttft_s_p50", "throughput_rps", "generated_tokens_per_answer", "returned_tokens_per_answer",
           "generated_tokens_per_s", "choices_per_answer", "finish_reasons")
SAME = ("loop", "stream", "max_tokens", "ignore_eos", "temperature", "prompts", "seed")
"""Settings that must agree for the two latencies to be compared on the same work."""
PLOT = "compare_latency_vs_best_of.png"


def _key(p: dict[str, Any]) -> tuple[Any, ...]:
    return p["loop"], p["concurrency"], p["rate"], p["best_of"]


def _label(p: dict[str, Any]) -> str:
    return f"{_load_label(p)} N={p['best_of']}"


def _load(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """NAME=PATH or PATH (a run directory or its summary.json); the name defaults to the run's mode."""
    name, sep, rest = spec.partition("=")
    if not sep or "/" in name or not name:
        name, rest = "", spec
    path = Path(rest)
    if path.is_dir():
        path = path / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bon loadtest --compare: cannot read {path}: {exc}") from exc
    if "points" not in summary or "config" not in summary:
        raise SystemExit(f"bon loadtest --compare: {path} is not a load-test summary")
    return name or str(summary["config"].get("mode", path.parent.name)), path, summary


def _ignore_eos(config: dict[str, Any]) -> bool:
    # runs made before --ignore-eos existed passed it in --extra-body
    return bool(config.get("ignore_eos") or (config.get("extra_body") or {}).get("ignore_eos"))


def compare_runs(specs: list[str], out: Path) -> dict[str, Any]:
    """Match the two runs' sweep points, write compare.json and a latency plot to `out`, return the comparison."""
    (name_a, path_a, a), (name_b, path_b, b) = (_load(s) for s in specs)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (1)", f"{name_b} (2)"
    warnings = []
    for field in SAME:
        va, vb = (_ignore_eos(s["config"]) if field == "ignore_eos" else s["config"].get(field) for s in (a, b))
        if va != vb:
            warnings.append(f"{field} differs: {name_a} {va!r}, {name_b} {vb!r}")
    if not _ignore_eos(a["config"]):
        warnings.append("without --ignore-eos the runs' answers differ in length: compare tokens per answer too")
    warnings += [f"{name}: {w}" for name, s in ((name_a, a), (name_b, b)) for w in s.get("warnings", [])]

    by_key = {_key(p): p for p in b["points"]}
    rows = []
    for pa in a["points"]:
        pb = by_key.pop(_key(pa), None)
        if pb is None:
            warnings.append(f"only in {name_a}: {_label(pa)}")
            continue
        p50a, p50b = pa["latency_s_p50"], pb["latency_s_p50"]
        rows.append({"loop": pa["loop"], "concurrency": pa["concurrency"], "rate": pa["rate"],
                     "best_of": pa["best_of"], "runs": [{k: p.get(k) for k in METRICS} for p in (pa, pb)],
                     "latency_p50_ratio": p50a / p50b if p50a is not None and p50b else None,
                     "latency_p50_diff_s": p50a - p50b if p50a is not None and p50b is not None else None})
    warnings += [f"only in {name_b}: {_label(p)}" for p in by_key.values()]

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "kind": "compare",
        "runs": [{"name": name, "summary": str(path), "mode": s["config"].get("mode"), "url": s["config"].get("url"),
                  "model": s["config"].get("model")} for name, path, s in ((name_a, path_a, a), (name_b, path_b, b))],
        "settings": {field: a["config"].get(field) for field in SAME} | {"ignore_eos": _ignore_eos(a["config"])},
        "points": rows,
        "warnings": warnings,
        "out": str(out),
        "files": ["compare.json", _plot(rows, (name_a, name_b), out).name],
    }
    write_json(summary, out / "compare.json")
    return summary


def _plot(rows: list[dict[str, Any]], names: tuple[str, str], out: Path) -> Path:
    """p50 (solid) and p95 (dashed) latency vs best_of, one colour per run and load level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for side, name in enumerate(names):
        for load in dict.fromkeys(_load_label(r) for r in rows):
            row = sorted((r for r in rows if _load_label(r) == load and r["runs"][side]["latency_s_p50"] is not None),
                         key=lambda r: r["best_of"])
            xs = [r["best_of"] for r in row]
            line, = ax.plot(xs, [r["runs"][side]["latency_s_p50"] for r in row], "o-", label=f"{name} {load} p50")
            ax.plot(xs, [r["runs"][side]["latency_s_p95"] for r in row], "s--", color=line.get_color(), alpha=0.6,
                    label=f"{name} {load} p95")
    log2_if_spread(ax, [r["best_of"] for r in rows])
    ax.set(xlabel="best_of / n (N)", ylabel="latency (s)", title=f"End-to-end latency: {names[0]} vs {names[1]}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    write_atomic(out / PLOT, png(fig, dpi=100))
    plt.close(fig)
    return out / PLOT


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_compare(summary: dict[str, Any]) -> str:
    """One line per matched point: both runs' p50 and p95, the ratio and difference of p50, tokens per answer."""
    a, b = (run["name"] for run in summary["runs"])
    lines = [f"A = {a}: {summary['runs'][0]['mode']} {summary['runs'][0]['url']}",
             f"B = {b}: {summary['runs'][1]['mode']} {summary['runs'][1]['url']}",
             f"{'load':>8} {'N':>3} {'A p50 s':>8} {'B p50 s':>8} {'A/B p50':>7} {'A-B p50':>8} {'A p95 s':>8} "
             f"{'B p95 s':>8} {'A ok':>5} {'B ok':>5} {'A gen/ans':>9} {'B gen/ans':>9}"]
    for r in summary["points"]:
        ra, rb = r["runs"]
        load = str(r["concurrency"]) if r["loop"] == "closed" else f"{r['rate']:g}/s"
        lines.append(
            f"{load:>8} {r['best_of']:>3} {_fmt(ra['latency_s_p50'], '8.3f')} {_fmt(rb['latency_s_p50'], '8.3f')} "
            f"{_fmt(r['latency_p50_ratio'], '7.2f')} {_fmt(r['latency_p50_diff_s'], '8.3f')} "
            f"{_fmt(ra['latency_s_p95'], '8.3f')} {_fmt(rb['latency_s_p95'], '8.3f')} {ra['answered']:>5} "
            f"{rb['answered']:>5} {_fmt(ra['generated_tokens_per_answer'], '9.1f')} "
            f"{_fmt(rb['generated_tokens_per_answer'], '9.1f')}")
    lines += [f"warning: {w}" for w in summary["warnings"]]
    lines.append(f"wrote {summary['out']}: " + ", ".join(summary["files"]))
    return "\n".join(lines)
