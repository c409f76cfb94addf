"""What `bon eval compare` leaves behind besides results.json: its plots (matplotlib, Agg) and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.files import write_atomic
from loadtest.report import png

PLOTS = ("reward_vs_kl.png", "overoptimisation.png", "gold_vs_cost.png", "gold_vs_latency.png", "early_rejection.png")
COLORS = {"sft": "tab:blue", "dpo": "tab:orange", "ppo": "tab:green"}
COST_LABELS = {"device_seconds_per_answer": "device-seconds per answer (server)",
               "tokens_per_answer": "tokens generated per answer (offline; no server measurement)"}


def _by_policy(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["policy"], []).append(r)
    return {name: sorted(group, key=lambda r: r["best_of"]) for name, group in out.items()}


def _name(policy: str) -> str:
    return "SFT + BoN" if policy == "sft" else f"{policy.upper()} (+ BoN)"


def _annotate_n(ax: Any, xs: Sequence[float], ys: Sequence[float], rows: Sequence[dict[str, Any]]) -> None:
    for x, y, r in zip(xs, ys, rows, strict=True):
        ax.annotate(f"{r['best_of']}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, alpha=0.8)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """reward_vs_kl.png, overoptimisation.png, gold_vs_cost.png and, with server figures, gold_vs_latency.png
    (a stale one from an earlier run with the server is removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        write_atomic(out / name, png(fig, dpi=110))
        plt.close(fig)
        paths.append(out / name)

    groups = _by_policy(results["methods"])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    panels = ((axes[0], "gold_reward_mean", "Gold reward"), (axes[1], "rm_reward_mean", "Proxy (RM) reward"))
    for ax, key, title in panels:
        for policy, rows in groups.items():
            xs, ys = [r["kl_estimate"] for r in rows], [r[key] for r in rows]
            ax.errorbar(xs, ys, xerr=[r["kl_estimate_ci95"] for r in rows],
                        yerr=[r[key.replace("mean", "ci95")] for r in rows], fmt="o-", color=COLORS.get(policy),
                        capsize=2, label=f"{_name(policy)}: estimate")
            ax.plot([r["kl_bound"] + r["kl_drift"] for r in rows], ys, ":", color=COLORS.get(policy), alpha=0.6,
                    label=f"{_name(policy)}: analytic bound" + ("" if policy == "sft" else " + MC drift"))
            _annotate_n(ax, xs, ys, rows)
        ax.set(xlabel="KL to SFT (nats per answer)", ylabel=title.lower(), title=f"{title} vs KL (labels: N)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    save(fig, "reward_vs_kl.png")

    over = results["overoptimisation"]
    base = next(r for r in groups["sft"] if r["best_of"] == min(over["best_of"]))
    fig, ax = plt.subplots(figsize=(6.8, 4.3))
    for policy, rows in groups.items():
        ns = [r["best_of"] for r in rows]
        gold = [(r["gold_reward_mean"] - base["gold_reward_mean"]) / over["gold_sd"] for r in rows]
        proxy = [(r["rm_reward_mean"] - base["rm_reward_mean"]) / over["proxy_sd"] for r in rows]
        ax.plot(ns, gold, "o-", color=COLORS.get(policy), label=f"{_name(policy)}: gold")
        ax.plot(ns, proxy, "s--", color=COLORS.get(policy), alpha=0.7, label=f"{_name(policy)}: proxy (RM)")
    all_ns = sorted({r["best_of"] for r in results["methods"]})
    if len(all_ns) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_ns, [str(n) for n in all_ns])
        ax.minorticks_off()
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="N (Best-of-N)", ylabel="gain over SFT N=1 (SFT answers' std devs)",
           title="Overoptimisation: gold vs proxy reward as N grows")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    save(fig, "overoptimisation.png")

    cost_key = results["pareto"]["cost"]
    frontier = set(results["pareto"]["frontier"])
    fig, ax = plt.subplots(figsize=(6.8, 4.3))
    for policy, rows in groups.items():
        xs, ys = [r[cost_key] for r in rows], [r["gold_reward_mean"] for r in rows]
        ax.errorbar(xs, ys, yerr=[r["gold_reward_ci95"] for r in rows], fmt="o-", color=COLORS.get(policy),
                    capsize=2, label=_name(policy))
        _annotate_n(ax, xs, ys, rows)
    front = sorted((r for r in results["methods"] if r["label"] in frontier), key=lambda r: r[cost_key])
    ax.step([r[cost_key] for r in front], [r["gold_reward_mean"] for r in front], where="post", color="black",
            lw=1.2, alpha=0.7, label="Pareto frontier")
    ax.set_xscale("log")
    ax.set(xlabel=COST_LABELS[cost_key], ylabel="gold reward", title="Gold reward vs cost (labels: N)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    save(fig, "gold_vs_cost.png")

    if results["server"]["measured"]:
        fig, ax = plt.subplots(figsize=(6.8, 4.3))
        for policy, rows in groups.items():
            xs, ys = [r["latency_p50_s"] for r in rows], [r["gold_reward_mean"] for r in rows]
            ax.errorbar(xs, ys, yerr=[r["gold_reward_ci95"] for r in rows], fmt="o-", color=COLORS.get(policy),
                        capsize=2, label=f"{_name(policy)}: p50")
            ax.plot([r["latency_p95_s"] for r in rows], ys, "x", color=COLORS.get(policy), alpha=0.6,
                    label=f"{_name(policy)}: p95")
            _annotate_n(ax, xs, ys, rows)
        ax.set_xscale("log")
        ax.set(xlabel="latency per answer (s, concurrency 1)", ylabel="gold reward",
               title="Gold reward vs latency (labels: N)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        save(fig, "gold_vs_latency.png")
    if "rows" in results["early_rejection"]:
        fig = _early_rejection_figure(plt, results)
        save(fig, "early_rejection.png")
    for name in PLOTS:
        if out / name not in paths:
            (out / name).unlink(missing_ok=True)
    return paths


def _early_rejection_figure(plt: Any, results: dict[str, Any]) -> Any:
    """Gold against generated tokens (and against latency, where the server measured it) for Best-of-N on SFT and
    every early-rejection configuration, with the target's box; and the prefix/full rank correlation per k."""
    early = results["early_rejection"]
    target, rows = early["target"], early["rows"]
    bon = _by_policy(results["methods"])["sft"]
    timed = [r for r in rows if r.get("latency_p50_s") is not None]
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(17 if timed else 11.5, 4.6),
                             gridspec_kw={"width_ratios": [1.4, 0.8, 1.2] if timed else [1.4, 0.8]})
    ms = sorted({r["best_of"] for r in rows})
    ks = sorted({r["after_tokens"] for r in rows})
    colors = dict(zip(ms, ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"), strict=False))
    markers = dict(zip(ks, "o^sDvP*X", strict=False))
    sizes = {f: 3.5 + 2.5 * i for i, f in enumerate(sorted({r["keep"] for r in rows}))}

    def bon_curve(ax: Any, key: str) -> None:
        xs, ys = [r[key] for r in bon], [r["gold_reward_mean"] for r in bon]
        ax.errorbar(xs, ys, yerr=[r["gold_reward_ci95"] for r in bon], fmt="o-", color=COLORS["sft"], capsize=2,
                    label="SFT Best-of-N (labels: N)")
        _annotate_n(ax, xs, ys, bon)
        low, high = (target["gold_reward_mean"] + s * target["gold_reward_ci95"] for s in (-1, 1))
        ax.axhspan(low, high, color=COLORS["sft"], alpha=0.1, label=f"BoN-{target['best_of']}'s 95% CI")

    def er_points(ax: Any, key: str, points: list[dict[str, Any]]) -> None:
        for r in points:
            ax.errorbar(r[key], r["gold_reward_mean"], yerr=r["gold_reward_ci95"], fmt=markers[r["after_tokens"]],
                        color=colors[r["best_of"]], capsize=1.5, ms=sizes[r["keep"]], alpha=0.75, elinewidth=0.6)

    ax = axes[0]
    bon_curve(ax, "tokens_per_answer")
    er_points(ax, "tokens_per_answer", rows)
    ax.axvline(target["tokens_per_answer"] / 2, color="grey", ls="--", lw=1,
               label=f"half BoN-{target['best_of']}'s tokens")
    for m in ms:
        ax.plot([], [], "s", color=colors[m], label=f"early rejection, M={m}")
    for k in ks:
        ax.plot([], [], markers[k], color="grey", label=f"k={k} tokens")
    for f, size in sizes.items():
        ax.plot([], [], "o", color="grey", ms=size, label=f"f={f:g} kept")
    ax.set_xscale("log")
    ax.set(xlabel="tokens generated per answer (offline)", ylabel="gold reward",
           title="Early rejection (M colour, k marker, f size) vs Best-of-N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="xx-small", ncol=2)

    ax = axes[1]
    corr = [c for c in early["prefix_correlation"] if c["spearman_mean"] is not None]
    ax.errorbar([c["after_tokens"] for c in corr], [c["spearman_mean"] for c in corr],
                yerr=[c["spearman_ci95"] for c in corr], fmt="o-", color="black", capsize=2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="k (tokens scored)", ylabel="Spearman ρ, within a prompt (mean over prompts)",
           title="Prefix score at k vs full-answer score")
    ax.grid(alpha=0.3)

    if timed:
        ax = axes[2]
        bon_curve(ax, "latency_p50_s")
        er_points(ax, "latency_p50_s", timed)
        for r in timed:
            ax.annotate(f"M={r['best_of']} k={r['after_tokens']}", (r["latency_p50_s"], r["gold_reward_mean"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=6, color=colors[r["best_of"]])
        ax.set_xscale("log")
        ax.set(xlabel="latency p50 (s, concurrency 1)", ylabel="gold reward",
               title="Gold vs latency through bon serve")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="xx-small")
    return fig


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _kl_cell(r: dict[str, Any]) -> str:
    estimate = f"{r['kl_estimate']:.2f} ± {r['kl_estimate_ci95']:.2f}"
    if r["kl_method"] == "monte-carlo":
        return f"{estimate} (Monte Carlo)"
    if r["kl_method"] == "bon-plugin+monte-carlo":
        return f"{estimate} (bound {r['kl_bound']:.2f} + MC drift {r['kl_drift']:.2f})"
    return f"{estimate} (bound {r['kl_bound']:.2f})"


def _interval(d: dict[str, Any]) -> str:
    """A paired difference as its mean, 95% CI and p-value."""
    return (f"{d['mean']:+.3f} (95% CI {d['mean'] - d['ci95']:+.3f} to {d['mean'] + d['ci95']:+.3f}, "
            f"p = {d['p_value']:.2g})")


def _fall_test_text(test: dict[str, Any] | None, prompts: int, seed: int) -> str:
    """What the overoptimisation verdict's test did and found, for the report."""
    if test is None:
        return "No test of a fall in gold: it needs at least 4 prompts and 2 values of N."
    half = len(test["picking_prompts"])
    text = (f"Test of a fall: every N is estimated from the same answers, so gold at two N is compared paired by "
            f"prompt, and a peak picked as the maximum is tested on other prompts than those it was picked on. The "
            f"{prompts} prompts were split at random (seed {seed}) into {half} and {prompts - half}; on the first, "
            f"gold peaks at N={test['peak_best_of']}")
    if test["held_out"] is None:
        text += ", the largest N, so there is no fall to test."
    else:
        text += (f"; on the second, gold at N={test['peak_best_of']} minus gold at N={test['max_best_of']} is "
                 f"{_interval(test['held_out'])}; paired test, normal approximation; a fall is claimed when the "
                 "difference is positive with p < 0.05.")
    if test["all_prompts"] is not None:
        text += (f" On all {prompts} prompts, with the peak (N={test['all_prompts_peak_best_of']}) picked on them "
                 f"too, the same difference is {_interval(test['all_prompts'])}: optimistic, as the data chose the "
                 "comparison it tests.")
    return text


def _table(results: dict[str, Any]) -> list[str]:
    lines = ["| method | N | gold reward ± 95% CI | proxy (RM) | KL to SFT (nats) | win rate vs SFT | "
             "latency p50 / p95 (s) | device-s / answer | tokens / answer |",
             "| --- | ---: | --- | ---: | --- | --- | --- | ---: | ---: |"]
    frontier = set(results["pareto"]["frontier"])
    for r in results["methods"]:
        mark = " ◆" if r["label"] in frontier else ""
        lines.append(
            f"| {r['label']}{mark} | {r['best_of']} | {r['gold_reward_mean']:.3f} ± {r['gold_reward_ci95']:.3f} | "
            f"{r['rm_reward_mean']:.3f} | {_kl_cell(r)} | {r['win_rate_vs_sft']:.3f} ± "
            f"{r['win_rate_vs_sft_ci95']:.3f} | {_f(r.get('latency_p50_s'))} / {_f(r.get('latency_p95_s'))} | "
            f"{_f(r.get('device_seconds_per_answer'), '.4f')} | {r['tokens_per_answer']:.1f} |")
    return lines


def _paired_cell(d: dict[str, Any]) -> str:
    """A paired difference in a table cell: mean ± CI, starred when p < 0.05."""
    return f"{d['mean']:+.3f} ± {d['ci95']:.3f}{' *' if d['p_value'] < 0.05 else ''}"


def _early_rejection_section(results: dict[str, Any]) -> list[str]:
    """Early rejection against Best-of-N: the table, the target's verdict, where it wins and loses, and how well
    a prefix foresees the full answer's score."""
    early = results["early_rejection"]
    if "rows" not in early:
        return []
    target, rows, n_target = early["target"], early["rows"], early["target"]["best_of"]
    low = target["gold_reward_mean"] - target["gold_reward_ci95"]
    half = target["tokens_per_answer"] / 2
    timed = any(r.get("latency_p50_s") is not None for r in rows)
    lines = [
        "## Early rejection (speculative rejection) vs Best-of-N", "",
        "Early rejection starts M candidates, scores each one's first k tokens with the reward model, finishes "
        "the best ⌈f·M⌉ and returns the RM-argmax of those (`early_rejection` in the API). A kept candidate's "
        "answer is the one it would have been without the cut, so every (M, k, f) is estimated exactly from the "
        f"same {results['config']['sft_samples']} SFT answers per prompt as Best-of-N, averaged over every "
        "M-subset of them; a cut candidate costs min(k, its length) tokens. Gold ± 95% CI over prompts; the "
        "differences are paired by prompt (± 95% CI, * p < 0.05); “BoN at equal tokens” is Best-of-N at the "
        "N that generates as many tokens (fractional N interpolated linearly); “pick kept” is how often "
        "Best-of-M's own pick survives the cut (then both return the same answer).", "",
        f"**Target**: gold within Best-of-{n_target}'s 95% CI ({target['gold_reward_mean']:.3f} ± "
        f"{target['gold_reward_ci95']:.3f}, so at least {low:.3f}) at no more than half its generated tokens "
        f"({half:.0f} of {target['tokens_per_answer']:.0f} per answer).", "",
        "![early rejection vs Best-of-N](early_rejection.png)", "",
        "| configuration | kept | gold ± 95% CI | − BoN-" + str(n_target) + " | − BoN at equal tokens (N) | "
        "tokens / answer (× BoN-" + str(n_target) + ") | pick kept | target |"
        + (" latency p50 / p95 (s) | server tokens / answer |" if timed else ""),
        "| --- | ---: | --- | --- | --- | ---: | ---: | --- |" + (" --- | ---: |" if timed else ""),
    ]
    for r in rows:
        verdict = "**met**" if r["meets_target"] else "missed: " + "; ".join(r["target_miss"])
        line = (f"| {r['label']} | {r['kept']} | {r['gold_reward_mean']:.3f} ± {r['gold_reward_ci95']:.3f} | "
                f"{_paired_cell(r['vs_target'])} | {_paired_cell(r['vs_equal_tokens_bon'])} "
                f"({r['equal_tokens_best_of']:.1f}) | {r['tokens_per_answer']:.1f} ({r['tokens_vs_target']:.2f}) | "
                f"{r['bon_pick_kept']:.2f} | {verdict} |")
        if timed:
            line += (f" {_f(r.get('latency_p50_s'))} / {_f(r.get('latency_p95_s'))} | "
                     f"{_f(r.get('server_generated_tokens_per_answer'), '.1f')} |")
        lines.append(line)
    met = [r for r in rows if r["meets_target"]]
    lines += ["", f"**{len(met)} of {len(rows)} configurations meet the target**"
              + (": " + ", ".join(r["label"] for r in met) + "." if met else ".")]
    for why in ("gold below the target's CI", "more than half the target's tokens"):
        missed = [r["label"] for r in rows if why in r["target_miss"]]
        if missed:
            lines.append(f"Missed, {why}: " + ", ".join(missed) + ".")
    bon = sorted((r for r in results["methods"] if r["policy"] == "sft"), key=lambda r: r["best_of"])
    plain = next((r for r in bon if r["gold_reward_mean"] >= low and r["tokens_per_answer"] <= half), None)
    if plain is not None:
        lines.append(f"Plain Best-of-{plain['best_of']} meets it too ({plain['gold_reward_mean']:.3f} at "
                     f"{plain['tokens_per_answer']:.0f} tokens per answer): here gold saturates early in N, so "
                     "the target alone does not show that early rejection helps; the comparison at equal tokens "
                     "does.")
    wins = [r["label"] for r in rows if r["vs_equal_tokens_bon"]["mean"] > 0 and r["vs_equal_tokens_bon"]["p_value"]
            < 0.05]
    losses = [r["label"] for r in rows if r["vs_equal_tokens_bon"]["mean"] < 0
              and r["vs_equal_tokens_bon"]["p_value"] < 0.05]
    lines += ["", "Against plain Best-of-N at the same generated tokens (paired, p < 0.05): "
              + (f"early rejection wins at {', '.join(wins)}" if wins else "it wins nowhere")
              + "; " + (f"it loses at {', '.join(losses)}" if losses else "it loses nowhere") + "; the other "
              f"{len(rows) - len(wins) - len(losses)} are not distinguishable from it. With {len(rows)} "
              "configurations on the same prompts, about one in twenty would pass p < 0.05 by chance, and the best "
              "of them is an optimistic pick.", "",
              "How well the reward model's score of the first k tokens foresees its score of the whole answer "
              "(Spearman's ρ among one prompt's answers, mean over prompts ± 95% CI; prompts whose prefixes all "
              "score alike have no ranking and are counted apart). A low ρ at small k is the failure mode of early "
              "rejection: the verdict then cuts the candidates that would have won.", "",
              "| k | Spearman ρ (prefix vs full) | prompts | prompts with all prefixes tied |",
              "| ---: | --- | ---: | ---: |"]
    for c in early["prefix_correlation"]:
        rho = "–" if c["spearman_mean"] is None else f"{c['spearman_mean']:.3f} ± {c['spearman_ci95']:.3f}"
        lines.append(f"| {c['after_tokens']} | {rho} | {c['prompts']} | {c['tied_prompts']} |")
    return [*lines, ""]


def write_report(results: dict[str, Any], path: Path) -> None:
    """The markdown report: setup, the table, the plots, the frontier, the break-even and the overoptimisation."""
    cfg, server, over = results["config"], results["server"], results["overoptimisation"]
    versions = ", ".join(f"{name} `{c['version']}`" for name, c in results["checkpoints"].items())
    tuned = [name for name in results["checkpoints"] if name not in ("sft", "rm")]
    lines = [
        "# Best-of-N on the SFT policy vs DPO and PPO",
        "",
        f"{results['prompts']['count']} held-out prompts ({results['prompts']['split']} split, seed {cfg['seed']}), "
        f"the same for every method. The SFT policy answered each {cfg['sft_samples']} times"
        + (f", {' and '.join(t.upper() for t in tuned)} {cfg['tuned_samples']} times" if tuned else "")
        + f" (temperature {cfg['temperature']}, at most {cfg['max_new_tokens']} tokens). The reward model scores "
        "every answer (proxy); the gold judge plays the annotator. Best-of-N for every N is estimated from these "
        "answers by order statistics; the method is in `docs/compare.md` of the bon repository.",
        "",
        f"Checkpoints: {versions}.",
        "",
    ]
    if server["measured"]:
        lines += [f"Latency and cost: {server['requests_per_point']} requests per row through `bon serve` "
                  f"(device `{server['device']}`, {server['cpu_count']} CPU cores visible), one at a time; "
                  f"{server['cost']}.", ""]
    else:
        lines += [f"Latency and cost: not measured ({server['reason']}); cost is tokens generated per answer.", ""]
    lines += _table(results)
    lines += ["", "◆ on the Pareto frontier of gold reward against cost. KL: Best-of-N rows on SFT give the plug-in "
              "estimate ± 95% CI and the analytic bound log N − (N−1)/N; tuned rows at N=1 are Monte Carlo over "
              "their samples; Best-of-N on a tuned policy gives the plug-in estimate of the selection plus the "
              "Monte Carlo drift of the selected answers from SFT, ± 95% CI, and beside it \"bound + MC drift\": "
              "the analytic bound covers the selection's share only, the drift is an estimate, not a bound. "
              "Win rate: P(gold of the method's answer > gold of an SFT answer), ties half.", ""]
    lines += ["## Reward vs KL", "", "![gold and proxy reward vs KL](reward_vs_kl.png)", "",
              "## Overoptimisation: gold vs proxy as N grows", "", "![gold vs proxy reward vs N](overoptimisation.png)",
              "", f"Best-of-N on SFT: {over['verdict']}. From N={over['best_of'][0]} to N={over['best_of'][-1]} the "
              f"proxy rises by {over['proxy_gain_sd'][-1]:+.2f} σ and gold by {over['gold_gain_sd'][-1]:+.2f} σ "
              f"(gold peaks at N={over['gold_peak_best_of']}; σ: the SFT answers' standard deviation of each "
              f"score, gold {over['gold_sd']:.3f}, proxy {over['proxy_sd']:.3f}).", "",
              _fall_test_text(over["fall_test"], results["prompts"]["count"], cfg["seed"]), ""]
    lines += ["## Gold reward vs cost and latency", "", "![gold reward vs cost](gold_vs_cost.png)", ""]
    if server["measured"]:
        lines += ["![gold reward vs latency](gold_vs_latency.png)", ""]
    lines += [f"Pareto frontier ({COST_LABELS[results['pareto']['cost']]}), cheapest first: "
              + " → ".join(results["pareto"]["frontier"]) + ".", ""]
    if results["break_even"]:
        lines += ["## Break-even of training", "",
                  "Training cost is the trainer's wall time × its processes, from the checkpoint's manifest "
                  "(`figures.train_seconds_this_run × hyperparameters.world_size`; a resumed run counts its last "
                  "leg only), on the machine that trained it: from the method's own preparation (DPO's reference "
                  "log-probs, PPO's reward-normalisation rollouts) to its last update, periodic validation "
                  "included, the final evaluation not. It is repaid by the cost per answer saved by serving "
                  "the tuned policy at N=1 instead of the cheapest Best-of-N on SFT with equal gold reward "
                  "(N interpolated on log N). The break-even is solved again at both ends of the tuned policy's "
                  "gold 95% CI; the Best-of-N curve's own uncertainty is left out, and would widen the range.",
                  ""]
        for name, b in results["break_even"].items():
            seconds = _f(results["training_cost"][name]["device_seconds"], ".0f")
            lines.append(f"- **{name.upper()}** (training: {seconds} device-s): {b['text']}")
        lines.append("")
    lines += _early_rejection_section(results)
    lines += [f"Generated by `bon eval compare` in {results['seconds']:.0f} s; every figure is in results.json.", ""]
    write_atomic(path, "\n".join(lines))


def format_summary(results: dict[str, Any]) -> str:
    """What `bon eval compare` prints without --json: the table, the verdicts, where the files went."""
    lines = _table(results) + ["", f"overoptimisation: {results['overoptimisation']['verdict']}"]
    lines += [f"break-even {name}: {b['text']}" for name, b in results["break_even"].items()]
    if "rows" in results["early_rejection"]:
        met = results["early_rejection"]["meeting_target"]
        lines.append(f"early rejection: {len(met)} of {len(results['early_rejection']['rows'])} configurations meet "
                     "the target" + (": " + ", ".join(met) if met else ""))
    lines.append(f"wrote {results['out']}: " + ", ".join(results["files"]))
    return "\n".join(lines)
