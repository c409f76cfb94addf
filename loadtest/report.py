"""What a load test leaves behind: requests.csv, summary.json and three PNG plots, each written atomically
(a temp file in the same directory, then os.replace), and the table printed when --json is not given."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.files import write_atomic
from loadtest.runner import Point, PointResult

CSV_FIELDS = ("loop", "concurrency", "rate", "best_of", "request_id", "start_s", "status", "error", "latency_s",
              "ttft_s", "itl_mean_s", "itl_max_s", "prompt_tokens", "completion_tokens", "generated_tokens", "choices",
              "finish_reasons", "reward", "queue_s", "sample_s", "score_s", "device_seconds", "device_source",
              "policy_version", "rm_version")
PLOTS = ("latency_vs_best_of.png", "throughput_vs_concurrency.png", "latency_cdf.png")


def png(fig: Any, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes, for `write_atomic`."""
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=dpi)
    return data.getvalue()


def point_fields(point: Point) -> dict[str, Any]:
    return {"loop": point.loop, "concurrency": point.concurrency if point.rate is None else None,
            "rate": point.rate, "best_of": point.best_of}


def write_csv(results: Sequence[PointResult], path: Path) -> None:
    """One row per request sent, in CSV_FIELDS order."""
    text = io.StringIO(newline="")
    out = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    out.writeheader()
    for result in results:
        for r in result.records:
            out.writerow({
                **point_fields(result.point), "request_id": r.request_id, "start_s": f"{r.start:.6f}",
                "status": r.status, "error": r.error, "latency_s": r.latency, "ttft_s": r.ttft,
                "itl_mean_s": float(np.mean(r.itls)) if r.itls else None,
                "itl_max_s": max(r.itls) if r.itls else None,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "generated_tokens": r.generated_tokens, "choices": r.choices,
                "finish_reasons": ";".join(r.finish_reasons), "reward": r.reward, "queue_s": r.queue_s,
                "sample_s": r.sample_s, "score_s": r.score_s, "device_seconds": r.device_seconds,
                "device_source": r.device_source, "policy_version": r.policy_version,
                "rm_version": r.rm_version,
            })
    write_atomic(path, text.getvalue())


def write_json(summary: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(summary, indent=2, default=str) + "\n")


def _load_label(p: dict[str, Any]) -> str:
    return f"C={p['concurrency']}" if p["loop"] == "closed" else f"R={p['rate']:g}/s"


def log2_if_spread(ax: Any, values: Sequence[float]) -> None:
    """A log2 x axis with a tick at each swept value, labelled as a plain number (8, not 2^3)."""
    if len(set(values)) > 1 and min(values) > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(values)), [f"{v:g}" for v in sorted(set(values))])
        ax.minorticks_off()


def write_plots(points: Sequence[dict[str, Any]], results: Sequence[PointResult], out: Path) -> list[Path]:
    """latency vs best_of (one line per load level), throughput vs load (one line per best_of), latency CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, name: str) -> Path:
        fig.tight_layout()
        write_atomic(out / name, png(fig, dpi=100))
        plt.close(fig)
        return out / name

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for load in dict.fromkeys(_load_label(p) for p in points):
        row = sorted((p for p in points if _load_label(p) == load and p["latency_s_p50"] is not None),
                     key=lambda p: p["best_of"])
        xs = [p["best_of"] for p in row]
        line, = ax.plot(xs, [p["latency_s_p50"] for p in row], "o-", label=f"{load} p50")
        ax.plot(xs, [p["latency_s_p95"] for p in row], "s--", color=line.get_color(), alpha=0.6, label=f"{load} p95")
    log2_if_spread(ax, [p["best_of"] for p in points])
    ax.set(xlabel="best_of (N)", ylabel="latency (s)", title="End-to-end latency vs best_of")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    paths.append(save(fig, PLOTS[0]))

    open_loop = any(p["loop"] == "open" for p in points)
    key = "rate" if open_loop else "concurrency"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for n in sorted({p["best_of"] for p in points}):
        row = sorted((p for p in points if p["best_of"] == n), key=lambda p: p[key])
        xs = [p[key] for p in row]
        line, = left.plot(xs, [p["throughput_rps"] for p in row], "o-", label=f"best_of={n}")
        left.plot(xs, [p["goodput_rps"] for p in row], "x:", color=line.get_color(), label="_nolegend_")
        right.plot(xs, [p["generated_tokens_per_s"] for p in row], "o-", color=line.get_color(), label=f"best_of={n}")
    xlabel = "offered rate (requests/s)" if open_loop else "concurrency (clients)"
    for ax, ylabel in ((left, "answers/s (goodput dotted)"), (right, "generated tokens/s")):
        log2_if_spread(ax, [p[key] for p in points])
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    left.legend(fontsize="small")
    fig.suptitle("Throughput vs " + ("offered rate" if open_loop else "concurrency"))
    paths.append(save(fig, PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for result in results:
        lat = np.sort([r.latency for r in result.records if r.ok and r.latency is not None])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", label=result.point.label)
    ax.set(xlabel="latency (s)", ylabel="fraction of answers ≤ latency", title="Latency CDF", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncol=2 if len(results) > 8 else 1)
    paths.append(save(fig, PLOTS[2]))
    return paths


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(summary: dict[str, Any]) -> str:
    """One line per sweep point, then the warnings and where the files went (a comparison has its own table)."""
    if summary.get("kind") == "compare":
        from loadtest.compare import format_compare  # it imports this module

        return format_compare(summary)
    head = (f"{'loop':6} {'load':>8} {'N':>3} {'sent':>5} {'ok':>5} {'err%':>5} {'p50 s':>7} {'p95 s':>7} "
            f"{'p99 s':>7} {'ttft50':>7} {'ans/s':>7} {'good/s':>7} {'gen tok/s':>9} {'dev-s/ans':>9} {'gen/ret':>7}")
    lines = [head]
    for p in summary["points"]:
        load = str(p["concurrency"]) if p["loop"] == "closed" else f"{p['rate']:g}/s"
        lines.append(
            f"{p['loop']:6} {load:>8} {p['best_of']:>3} {p['sent']:>5} {p['answered']:>5} "
            f"{100 * p['error_rate']:>5.1f} {_fmt(p['latency_s_p50'], '7.3f')} {_fmt(p['latency_s_p95'], '7.3f')} "
            f"{_fmt(p['latency_s_p99'], '7.3f')} {_fmt(p['ttft_s_p50'], '7.3f')} {p['throughput_rps']:7.2f} "
            f"{p['goodput_rps']:7.2f} {p['generated_tokens_per_s']:9.1f} "
            f"{_fmt(p['device_seconds_per_answer'], '9.3f')} {_fmt(p['generated_per_returned_token'], '7.2f')}")
        if p["errors_by_status"]:
            lines.append(f"{'':8} errors: {json.dumps(p['errors_by_status'])}")
    sources = {p["device_seconds_source"] for p in summary["points"]} - {None}
    lines.append(f"goodput: answers with latency <= {summary['config']['slo']} s; device-seconds from: "
                 + (", ".join(sorted(sources)) or "-")
                 + " (timings = server-reported sample + score; latency = end to end, an upper bound)")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(f"wrote {summary['out']}: " + ", ".join(summary["files"]))
    return "\n".join(lines)
