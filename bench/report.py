"""The benchmark's figures: ratios between targets, the performance goals met or missed (and what bounds a
missed one, from the same measurements), the JSON file, the latency plot and the plain-text report."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.config import TARGETS, BenchConfig
from bench.stats import ratio, series
from common.files import write_atomic
from loadtest.report import log2_if_spread, png

GOAL_N = 16
"""best_of at which the latency goals are set."""
SPEEDUP_GOAL = 5.0
OVERHEAD_GOAL = 0.05
PEER_GOAL = 1.0
SCORE_SHARE_GOAL = 0.20
THROUGHPUT_GOAL = 3.0
GROWTH_TOLERANCE = 0.01
"""Resident memory may differ by this fraction between the first tenth of the growth check and its end
(allocator noise) and still count as no growth."""


def _values(targets: dict[str, Any], letter: str, n: str, key: str) -> list[float] | None:
    """Target `letter`'s `key` at best_of `n`, repeat by repeat; None where it was not measured."""
    target = targets[letter]
    if target["status"] != "ok" or key not in target["points"].get(n, {}):
        return None
    return target["points"][n][key]["values"]


def ratios(targets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ratios the goals are about, at each N where both sides ran, repeat by repeat (see bench.stats)."""
    out: dict[str, dict[str, Any]] = {"speedup_c_over_a": {}, "overhead_c_minus_b_over_c": {},
                                      "d_over_e_without_rm": {}, "score_share_c": {}, "score_share_d": {}}
    ns = sorted({n for t in targets.values() for n in t.get("points", {})}, key=int)
    for n in ns:
        a, b, c = (_values(targets, x, n, "latency_s") for x in "abc")
        d, e_sample = _values(targets, "d", n, "latency_s"), _values(targets, "e", n, "sample_s")
        if a and c:
            out["speedup_c_over_a"][n] = ratio(a, c)
        if b and c:
            out["overhead_c_minus_b_over_c"][n] = series([(ci - bi) / ci for bi, ci in zip(b, c, strict=True)])
        if d and e_sample:
            out["d_over_e_without_rm"][n] = ratio(d, e_sample)
        for letter in "cd":
            score, total = _values(targets, letter, n, "score_s"), _values(targets, letter, n, "total_s")
            if score and total:
                out[f"score_share_{letter}"][n] = ratio(score, total)
    return out


def _p50(targets: dict[str, Any], letter: str, key: str) -> float:
    return targets[letter]["points"][str(GOAL_N)][key]["p50"]


def _goal(goal: str, figure: dict[str, Any], met: bool, measured: str, bound: str) -> dict[str, Any]:
    """A target measured: whether it is met, the figure, and, when missed, what bounds it."""
    return {"goal": goal, "met": met, "measured": measured, "p50": figure["p50"],
            "spread": [figure["min"], figure["max"]], "bound": "" if met else bound}


def _not_measured(goal: str, why: str) -> dict[str, Any]:
    return {"goal": goal, "met": None, "measured": f"not measured: {why}", "p50": None, "spread": None, "bound": ""}


def _needs(*letters: str) -> str:
    return f"needs best_of {GOAL_N} in the run and target{'s' * (len(letters) > 1)} {' and '.join(letters)}"


def _one(value: float) -> dict[str, Any]:
    """A single figure in the shape of a `series`."""
    return {"p50": value, "min": value, "max": value}


def _spread(f: dict[str, Any], fmt: str) -> str:
    return f"{format(f['p50'], fmt)} [{format(f['min'], fmt)}..{format(f['max'], fmt)}]"


def _speedup(targets: dict[str, Any], r: dict[str, Any], tokens: int) -> dict[str, Any]:
    goal = f"(c) at least {SPEEDUP_GOAL:g}× faster than (a)"
    f = r["speedup_c_over_a"].get(str(GOAL_N))
    if f is None:
        return _not_measured(goal, _needs("a", "c"))
    a_s, c_s = _p50(targets, "a", "sample_s"), _p50(targets, "c", "sample_s")
    a_step, c_step = a_s / (GOAL_N * tokens), c_s / tokens
    bound = (f"(c) samples in {c_s:.3f} s ({1e3 * c_step:.1f} ms per decode step of {GOAL_N} rows) and scores in "
             f"{_p50(targets, 'c', 'score_s'):.3f} s; (a) samples in {a_s:.3f} s ({1e3 * a_step:.1f} ms per token of "
             f"one row) and scores in {_p50(targets, 'a', 'score_s'):.3f} s. A step of {GOAL_N} rows costs "
             f"{c_step / a_step:.1f}× a step of one, which bounds sampling's speedup at "
             f"{a_step * GOAL_N / c_step:.1f}×")
    return _goal(goal, f, f["p50"] >= SPEEDUP_GOAL, f"{_spread(f, '.2f')}×", bound)


def _overhead(targets: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    goal = f"HTTP and pipeline overhead ((c) − (b)) at most {OVERHEAD_GOAL:.0%} of (c)"
    f = r["overhead_c_minus_b_over_c"].get(str(GOAL_N))
    if f is None:
        return _not_measured(goal, _needs("b", "c"))
    b, c = _p50(targets, "b", "latency_s"), _p50(targets, "c", "latency_s")
    # What the client waited for beyond bon's own total_seconds is HTTP and the JSON answer; the rest of (c) − (b)
    # is the pipeline's own work (the same prompts, seeds and tokens) taking longer in the server process.
    c_point = targets["c"]["points"][str(GOAL_N)]
    http = series([lat - total for lat, total in zip(c_point["latency_s"]["values"], c_point["total_s"]["values"],
                                                     strict=True)])
    measured = (f"{_spread(f, '.1%')} of (c); HTTP and the JSON answer alone (the client's latency minus bon's "
                f"total_seconds) {1e3 * http['p50']:.0f} ms, {http['p50'] / c:.1%} of (c)")
    bound = (f"(c) − (b) = {1e3 * (c - b):.0f} ms at p50, of which HTTP and the JSON answer take "
             f"{1e3 * http['p50']:.0f} ms; the rest is the same work done slower in the server process: sampling "
             f"{_p50(targets, 'c', 'sample_s'):.3f} s against {_p50(targets, 'b', 'sample_s'):.3f} s in process, "
             f"scoring {_p50(targets, 'c', 'score_s'):.3f} s against {_p50(targets, 'b', 'score_s'):.3f} s")
    return _goal(goal, f, f["p50"] <= OVERHEAD_GOAL, measured, bound)


def _peer(targets: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    goal = "(d) no slower than (e) without its RM step, vLLM's n=N alone"
    f = r["d_over_e_without_rm"].get(str(GOAL_N))
    if f is None:
        return _not_measured(goal, _needs("d", "e"))
    d_sample, d_score = _p50(targets, "d", "sample_s"), _p50(targets, "d", "score_s")
    e_sample = _p50(targets, "e", "sample_s")
    bound = (f"(d) samples in {d_sample:.3f} s ({d_sample / e_sample:.2f}× vLLM's n={GOAL_N} alone, {e_sample:.3f} s) "
             f"and then scores in {d_score:.3f} s, {d_score / e_sample:.0%} of vLLM's time. Every candidate here is "
             f"max_tokens long (ignore_eos), so all {GOAL_N} end on the same decode step: none can be scored while "
             f"the others still decode")
    return _goal(goal, f, f["p50"] <= PEER_GOAL, f"(d)/(e without RM) {_spread(f, '.2f')}", bound)


def _score_share(targets: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    goal = f"reward scoring at most {SCORE_SHARE_GOAL:.0%} of (c)'s end to end (bon.timings)"
    f = r["score_share_c"].get(str(GOAL_N))
    if f is None:
        return _not_measured(goal, _needs("c"))
    bound = (f"(c) scores {GOAL_N} candidates in {_p50(targets, 'c', 'score_s'):.3f} s, after sampling them in "
             f"{_p50(targets, 'c', 'sample_s'):.3f} s (the micro-batcher's wait for more work included)")
    return _goal(goal, f, f["p50"] <= SCORE_SHARE_GOAL, _spread(f, ".1%"), bound)


def _throughput(cfg: BenchConfig, throughput: dict[str, Any]) -> dict[str, Any]:
    first, last = str(cfg.concurrency[0]), str(cfg.concurrency[-1])
    goal = (f"throughput at best_of {cfg.throughput_best_of}: {last} clients at least {THROUGHPUT_GOAL:g}× "
            f"{first} on (c), the backend `make serve` uses")
    t = throughput.get("c")
    if t is None:
        return _not_measured(goal, "needs target c and the throughput section")
    one, many = t["concurrency"][first], t["concurrency"][last]
    bound = (f"with {last} clients a request takes {many['latency_s_p50']:.3f} s at p50 against "
             f"{one['latency_s_p50']:.3f} s alone ({many['latency_s_p50'] / one['latency_s_p50']:.1f}×)")
    if "d" in throughput:
        bound += f"; the vllm backend (d) gets {throughput['d']['ratio']:.2f}×"
    measured = f"{one['requests_per_s']:.2f} -> {many['requests_per_s']:.2f} requests/s: {t['ratio']:.2f}×"
    return _goal(goal, _one(t["ratio"]), t["ratio"] >= THROUGHPUT_GOAL, measured, bound)


def _growth(cfg: BenchConfig, memory: dict[str, Any] | None) -> dict[str, Any]:
    goal = f"no memory growth of (c)'s server over {cfg.leak_requests} requests"
    growth = (memory or {}).get("growth")
    if growth is None or len(growth["readings"]) < 3:
        return _not_measured(goal, "needs target c, the memory section and leak_requests of 2 or more")
    start, warm, end = growth["readings"][0], growth["readings"][1], growth["readings"][-1]
    change = (end["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"]
    per_request_kib = 1024 * (end["rss_mib"] - warm["rss_mib"]) / (end["requests"] - warm["requests"])
    measured = (f"RSS {start['rss_mib']:.1f} MiB before, {warm['rss_mib']:.1f} after {warm['requests']} requests, "
                f"{end['rss_mib']:.1f} after {end['requests']}: {change:+.2%} since the first tenth "
                f"({per_request_kib:+.2f} KiB per request; tolerance {GROWTH_TOLERANCE:.0%})")
    middle = growth["readings"][len(growth["readings"]) // 2]
    late_kib = 1024 * (end["rss_mib"] - middle["rss_mib"]) / (end["requests"] - middle["requests"])
    bound = (f"the server's resident memory grew by {end['rss_mib'] - warm['rss_mib']:.1f} MiB after the first tenth "
             f"of the requests; over the last {end['requests'] - middle['requests']} it grew by "
             f"{end['rss_mib'] - middle['rss_mib']:.1f} MiB ({late_kib:+.2f} KiB per request)")
    return _goal(goal, _one(change), change <= GROWTH_TOLERANCE, measured, bound)


def goals(cfg: BenchConfig, targets: dict[str, Any], r: dict[str, Any], throughput: dict[str, Any],
          memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each performance goal (the latency ones at best_of 16): met, missed with what bounds it (measured), or not
    measured and why."""
    return [_speedup(targets, r, cfg.max_tokens), _overhead(targets, r), _peer(targets, r), _score_share(targets, r),
            _throughput(cfg, throughput), _growth(cfg, memory)]


def summarize(cfg: BenchConfig, started: str, results: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a run: settings, machine, every target's points, ratios, goals, throughput, memory."""
    targets = {letter: {"name": TARGETS[letter], **results["targets"][letter]} for letter in TARGETS}
    warnings = [f"({letter}) best_of {n}: generated {p['tokens']} tokens, not {int(n) * cfg.max_tokens} each"
                for letter, t in targets.items() for n, p in t.get("points", {}).items()
                if any(k != int(n) * cfg.max_tokens for k in p["tokens"])]
    r = ratios(targets)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    return {"kind": "bench", "started": started, "config": config, "machine": results["machine"],
            "targets": targets, "ratios": r, "throughput": results["throughput"], "memory": results["memory"],
            "goals": goals(cfg, targets, r, results["throughput"], results["memory"]), "warnings": warnings}


def write_results(summary: dict[str, Any], out: Path) -> None:
    """<date>-<host>-<device>.json and its latency plot under `out`, each written atomically; their paths go
    into `summary["files"]`."""
    machine = summary["machine"]
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", machine["host"]) or "host"
    stem = f"{time.strftime('%Y-%m-%d-%H%M%S')}-{host}-{machine['device']}"
    json_path, plot_path = out / f"{stem}.json", out / f"{stem}-latency.png"
    summary["files"] = {"json": str(json_path), "plot": str(plot_path)}
    write_atomic(plot_path, _plot(summary))
    write_atomic(json_path, json.dumps(summary, indent=2) + "\n")


def _plot(summary: dict[str, Any]) -> bytes:
    """p50 latency vs best_of for every target that ran, the quartiles as error bars (min..max would let one
    slow outlier on a busy machine hide the rest); (e) also without its RM step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    lines = [(letter, t["name"], t["points"], "latency_s", "o-") for letter, t in summary["targets"].items()
             if t["status"] == "ok"]
    if summary["targets"]["e"]["status"] == "ok":
        lines.append(("e", "vllm serve n=N alone (e without RM)", summary["targets"]["e"]["points"], "sample_s", "s--"))
    xs_all = []
    for letter, name, points, key, style in lines:
        xs = sorted(int(n) for n in points)
        figures = [points[str(x)][key] for x in xs]
        p50 = [f["p50"] for f in figures]
        ax.errorbar(xs, p50, yerr=[[p - f["q1"] for p, f in zip(p50, figures, strict=True)],
                                   [f["q3"] - p for p, f in zip(p50, figures, strict=True)]],
                    fmt=style, capsize=3, label=f"({letter}) {name}")
        xs_all += xs
    log2_if_spread(ax, xs_all)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5 and 2, not 5×10⁻¹ and 2×10⁰
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="best_of (N)", ylabel="latency, p50 and quartiles (s)",
           title=f"Best-of-N latency, {summary['config']['max_tokens']} new tokens per candidate")
    ax.grid(alpha=0.3, which="both")
    if lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    data = png(fig, dpi=100)
    plt.close(fig)
    return data


def _cell(f: dict[str, Any] | None, scale: float, fmt: str) -> str:
    if f is None:
        return "-"
    return f"{format(f['p50'] * scale, fmt)} [{format(f['min'] * scale, fmt)}..{format(f['max'] * scale, fmt)}]"


def _row(label: str, cells: Sequence[str], width: int) -> str:
    return f"{label:<34}" + "".join(f"{c:>{width}}" for c in cells)


def format_report(s: dict[str, Any]) -> str:
    """The plain-text report: latencies, ratios, throughput, memory, and each goal met or missed."""
    m, cfg = s["machine"], s["config"]
    ns = [str(n) for n in cfg["best_of"]]
    width = 24
    lines = [f"bon bench, {s['started']} on {m['host']}: {m['cpus']} CPUs, load average "
             f"{m['load_average_start'][0]:.2f} at the start and {m['load_average_end'][0]:.2f} at the end, torch "
             f"threads {m['torch_threads']}, vLLM {m.get('vllm') or '-'}; per point {cfg['warmup']} warm-up and "
             f"{cfg['repeats']} timed requests, {cfg['max_tokens']} new tokens per candidate",
             "", _row("latency, ms: p50 [min..max]", [f"best_of {n}" for n in ns], width)]
    for letter, t in s["targets"].items():
        if t["status"] != "ok":
            lines.append(f"({letter}) {t['name']}: {t['status']}: {t['why'].splitlines()[0]}")
            continue
        lines.append(_row(f"({letter}) {t['name']}", [_cell(t["points"].get(n, {}).get("latency_s"), 1e3, ".0f")
                                                           for n in ns], width))
        if letter == "e":
            lines.append(_row("(e) without its RM step", [_cell(t["points"].get(n, {}).get("sample_s"), 1e3, ".0f")
                                                           for n in ns], width))
    labels = {"speedup_c_over_a": ("(a)/(c) speedup", 1, ".2f"), "overhead_c_minus_b_over_c": ("((c)-(b))/(c), %",
                                                                                                 100, ".1f"),
              "d_over_e_without_rm": ("(d)/(e without RM)", 1, ".2f"), "score_share_c": ("scoring share of (c), %",
                                                                                         100, ".1f"),
              "score_share_d": ("scoring share of (d), %", 100, ".1f")}
    lines += ["", _row("ratios, repeat by repeat", [f"best_of {n}" for n in ns], width)]
    for key, (label, scale, fmt) in labels.items():
        if s["ratios"][key]:
            lines.append(_row(label, [_cell(s["ratios"][key].get(n), scale, fmt) for n in ns], width))
    for letter, t in s["throughput"].items():
        rates = ", ".join(f"concurrency {c}: {p['requests_per_s']:.2f} req/s" for c, p in t["concurrency"].items())
        lines.append(f"throughput ({letter}) at best_of {t['best_of']}: {rates}; ratio {t['ratio']:.2f}×")
    memory = s["memory"]
    if memory and "peak" in memory:
        peak, growth = memory["peak"], memory["growth"]
        lines.append(f"memory of (c)'s server: peak RSS (VmHWM) {peak['vm_hwm_mib']:.1f} MiB after best_of "
                     f"{peak['best_of']} × {peak['concurrency']} clients; RSS "
                     + " -> ".join(f"{r['rss_mib']:.1f}" for r in growth["readings"])
                     + f" MiB over {growth['requests']} requests of best_of {growth['best_of']}")
    elif memory:
        lines.append(f"memory: {memory['status']}: {memory['why']}")
    lines += ["", f"goals (the latency ones at best_of {GOAL_N}):"]
    for g in s["goals"]:
        verdict = {True: "MET", False: "MISSED", None: "-"}[g["met"]]
        lines.append(f"  {verdict:<7}{g['goal']}: {g['measured']}")
        if g["bound"]:
            lines.append(f"         what bounds it: {g['bound']}")
    lines += [f"warning: {w}" for w in s["warnings"]]
    lines.append(f"wrote {s['files']['json']} and {s['files']['plot']}")
    return "\n".join(lines)
