"""`bon eval compare`: Best-of-N on the SFT policy against the DPO and PPO policies, on the same held-out prompts.

Each policy answers every prompt many times at temperature 1, once; the reward model (proxy) and the gold
judge score every answer. Best-of-N for every N then comes from those samples by order statistics, not from
fresh draws (the method, with its citations, is in docs/compare.md):

- gold and proxy reward: the unbiased estimator of E[score of the RM-argmax of N draws] from n ≥ N draws
  (a U-statistic over N-subsets; Nakano et al. 2021, WebGPT, appendix; Gao et al. 2022, §2);
- KL to SFT: the analytic bound log N − (N−1)/N (Stiennon et al. 2020), an upper bound (Beirami et al. 2024),
  beside a plug-in estimate: the exact KL of Best-of-N over the empirical distribution of the n answers,
  identical answers pooled. DPO and PPO: Monte Carlo, Σ_t log π_θ − log π_sft over the answer tokens;
- win rate against SFT by the gold judge, ties counted half;
- latency and device-seconds per answer, measured through `bon serve` with the load tool's library.

From those: the Pareto frontier of gold reward against cost, the break-even of each tuned policy's training
cost, the overoptimisation verdict (Gao et al. 2022), and a markdown report with plots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import world
from common.servers import free_port, start_server
from evaluation.compare_config import CompareConfig
from models.chat import prompt_ids, user
from models.checkpoint import read_manifest, verify, write_json_atomic
from models.sampling import SamplingParams, sample_answers
from training.common import mean_ci95
from training.dpo import answer_log_ratios
from training.evaluate import decode_answer, load_policy
from training.rm import score_texts

log = logging.getLogger(__name__)

TUNED = ("dpo", "ppo")
ROWS_PER_BATCH = 512
"""Sampled rows (prompts × answers) decoded together: about 0.5 GB of KV cache for the default ~4M-parameter policy."""


# ---------------------------------------------------------------------------------------------------------
# Best-of-N from n samples: order statistics


def bon_weights(n: int, best_of: int) -> np.ndarray:
    """P(the i-th lowest of n answers by RM is the RM-argmax of a uniformly random N-subset), i = 0..n−1.

    C(i, N−1) / C(n, N): the subset holds answer i and N−1 of the i answers below it. The weighted mean of any
    per-answer value is an unbiased estimate of that value's mean under Best-of-N (WebGPT, appendix).
    """
    if not 1 <= best_of <= n:
        raise ValueError(f"best_of {best_of} needs 1..{n} samples")
    total = math.comb(n, best_of)
    return np.array([math.comb(i, best_of - 1) / total for i in range(n)])


def bon_mean(rm: np.ndarray, values: np.ndarray, best_of: int) -> np.ndarray:
    """Per prompt, E[value of the RM-argmax of N fresh answers] from the n answers it has: (P, n) -> (P,).

    Ties in RM are broken by sample order (a stable sort), as argmax breaks them by index.
    """
    order = np.argsort(rm, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1) @ bon_weights(rm.shape[1], best_of)  # (P,)


def kl_bound(best_of: int) -> float:
    """The analytic KL(BoN_N ‖ π) = log N − (N−1)/N: exact only when no two answers share an outcome, else an
    upper bound (Stiennon et al. 2020, appendix; Beirami et al. 2024, Thm 3.1)."""
    return math.log(best_of) - (best_of - 1) / best_of


def bon_kl_plugin(rm: Sequence[float], texts: Sequence[str], best_of: int) -> float:
    """KL(BoN_N(p̂) ‖ p̂) for the empirical distribution p̂ of one prompt's answers, identical texts pooled.

    Best-of-N of an outcome y is F(y)^N − F⁻(y)^N, with F the CDF by RM score and F⁻ its strict version
    (Beirami et al. 2024, Lemma 1). At most log(#distinct answers); 0 at N = 1.
    """
    if best_of == 1:  # Best-of-1 is the policy itself (saves a rounding residue of ~1e-17)
        return 0.0
    groups: dict[str, list[float]] = {}
    for r, t in zip(rm, texts, strict=True):
        groups.setdefault(t, []).append(float(r))
    counts = np.array([len(g) for g in sorted(groups.values(), key=lambda g: float(np.mean(g)))], dtype=np.float64)
    p = counts / counts.sum()
    upper = np.cumsum(counts) / counts.sum()
    selected = upper**best_of - (upper - p).clip(min=0) ** best_of
    keep = selected > 0
    return float(np.sum(selected[keep] * np.log(selected[keep] / p[keep])))


def _prefer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a beats b, ½ on ties, 0 otherwise: (n,), (m,) -> (n, m)."""
    return (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])


def bon_win_rate_within(rm: np.ndarray, gold: np.ndarray, best_of: int) -> float:
    """P(gold of Best-of-N > gold of an independent answer) from one prompt's n > N answers of one policy.

    A U-statistic over (N-subset S, reference j ∉ S): answer a is the argmax of S with j outside it in
    C(#below a, N−1) of the C(n, N)·(n−N) pairs, where #below a leaves j out when j is below a.
    """
    n = len(rm)
    if best_of >= n:
        raise ValueError(f"a win rate at best_of {best_of} needs more than {best_of} samples")
    order = np.argsort(rm, kind="stable")
    g = gold[order]
    total = math.comb(n, best_of) * (n - best_of)
    keep = np.array([math.comb(a, best_of - 1) / total for a in range(n)])  # reference above a
    skip = np.array([math.comb(max(a - 1, 0), best_of - 1) / total for a in range(n)])  # reference below a
    weights = np.where(np.tri(n, k=-1, dtype=bool), skip[:, None], keep[:, None])  # (n, n) row a, column j
    np.fill_diagonal(weights, 0.0)
    return float((weights * _prefer(g, g)).sum())


# ---------------------------------------------------------------------------------------------------------
# Sampling and scoring


@dataclass
class Pool:
    """One policy's answers to the held-out prompts, scored; arrays are (prompts, answers per prompt)."""

    name: str
    texts: list[list[str]]
    tokens: np.ndarray
    """Tokens generated per answer (its end-of-turn token included when it stopped)."""
    rm: np.ndarray
    gold: np.ndarray
    log_ratio: np.ndarray | None = None
    """Σ_t log π − log π_sft over the answer's tokens (tuned policies): a one-sample KL estimate."""
    token_ids: list[list[list[int]]] | None = None
    """Each answer's token ids (end-of-turn appended when sampled): early rejection scores their prefixes."""


def load_reward_model(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A verified reward checkpoint, in eval mode on the CPU."""
    verify(path, kind="reward")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True,
                                                               trust_remote_code=False, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)


def build_pool(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
               k: int, cfg: CompareConfig, seed: int, reward: tuple[PreTrainedModel, PreTrainedTokenizerBase],
               reference: PreTrainedModel | None = None) -> Pool:
    # `k` answers per prompt (end-of-turn appended when sampled), deterministic given seed.
    heads = [prompt_ids(tokenizer, user(p)) for p in prompts]
    answers = sample_answers(model, tokenizer, heads, k, SamplingParams(cfg.max_new_tokens, cfg.temperature),
                             generator=torch.Generator().manual_seed(seed), batch_prompts=max(1, ROWS_PER_BATCH // k),
                             desc=f"sampling {name} ({k} per prompt)")
    texts = [[decode_answer(tokenizer, a) for a in group] for group in answers]
    flat = [(p, t) for p, group in zip(prompts, texts, strict=True) for t in group]
    log.info("%s: scoring %d answers with the reward model and the gold judge", name, len(flat))
    rm = np.array(score_texts(*reward, flat)).reshape(len(prompts), k)
    gold = np.array([world.score(p, t) for p, t in flat]).reshape(len(prompts), k)
    tokens = np.array([[len(a) for a in group] for group in answers], dtype=np.float64)
    ratio = None
    if reference is not None:
        # Σ_t log π − log π_sft over each answer's tokens: (prompts, answers)
        ratio = np.array(answer_log_ratios(model, reference, heads, answers, tokenizer.pad_token_id)).reshape(
            len(prompts), k)
    return Pool(name, texts, tokens, rm, gold, ratio, answers)


# ---------------------------------------------------------------------------------------------------------
# Figures per method


def _label(policy: str, best_of: int) -> str:
    if policy == "sft":
        return f"SFT BoN-{best_of}"
    return policy.upper() if best_of == 1 else f"{policy.upper()} + BoN-{best_of}"


def _kl_method(tuned: bool, best_of: int) -> str:
    """How a row's KL to SFT is made: `kl_estimate` is the selection's plug-in KL plus `kl_drift`, the tuned
    policy's Monte Carlo drift from SFT; `kl_bound` is the selection's analytic bound alone."""
    if not tuned:
        return "bon-plugin"
    return "monte-carlo" if best_of == 1 else "bon-plugin+monte-carlo"


def method_row(pool: Pool, best_of: int, sft: Pool) -> dict[str, Any]:
    """Gold and proxy reward, KL to SFT, win rate against SFT and offline token cost of Best-of-N on `pool`;
    `gold_per_prompt` keeps each prompt's estimate, for the paired tests across N."""
    gold_per_prompt = bon_mean(pool.rm, pool.gold, best_of).tolist()
    gold, gold_ci = mean_ci95(gold_per_prompt)
    proxy, proxy_ci = mean_ci95(bon_mean(pool.rm, pool.rm, best_of).tolist())
    selection_kl = np.array([bon_kl_plugin(r, t, best_of) for r, t in zip(pool.rm, pool.texts, strict=True)])
    if pool.log_ratio is None:  # Best-of-N on SFT itself
        drift = np.zeros(len(selection_kl))
        wins = [bon_win_rate_within(r, g, best_of) for r, g in zip(pool.rm, pool.gold, strict=True)]
    else:  # KL(BoN(π)‖π_sft) = KL(BoN(π)‖π) + E_BoN(π)[log π − log π_sft]
        drift = bon_mean(pool.rm, pool.log_ratio, best_of)
        beats = np.stack([_prefer(g, s).mean(axis=1) for g, s in zip(pool.gold, sft.gold, strict=True)])
        wins = bon_mean(pool.rm, beats, best_of).tolist()
    kl, kl_ci = mean_ci95((selection_kl + drift).tolist())
    win, win_ci = mean_ci95(wins)
    return {
        "label": _label(pool.name, best_of), "policy": pool.name, "best_of": best_of,
        "gold_reward_mean": gold, "gold_reward_ci95": gold_ci, "rm_reward_mean": proxy, "rm_reward_ci95": proxy_ci,
        "kl_estimate": kl, "kl_estimate_ci95": kl_ci, "kl_bound": kl_bound(best_of), "kl_drift": float(drift.mean()),
        "kl_method": _kl_method(pool.log_ratio is not None, best_of),
        "win_rate_vs_sft": win, "win_rate_vs_sft_ci95": win_ci,
        "tokens_per_answer": best_of * float(pool.tokens.mean()),
        "samples_per_prompt": pool.rm.shape[1], "prompts": pool.rm.shape[0], "gold_per_prompt": gold_per_prompt,
    }


# ---------------------------------------------------------------------------------------------------------
# Latency and cost through the server


@contextmanager
def running_server(policies: dict[str, Path], reward: Path, cfg: CompareConfig, max_best_of: int) -> Iterator[str]:
    """`bon serve` on a free port with every policy and the reward model; yields its base URL once ready."""
    port = free_port()
    command = [sys.executable, "-m", "bon.cli", "serve", "--port", str(port), "--reward", str(reward),
               "--device", cfg.device, "--max-best-of", str(max_best_of), "--default-best-of", "1",
               "--max-tokens", str(max(cfg.max_new_tokens, 1)), "--default-max-tokens", str(cfg.max_new_tokens),
               "--log-level", "warning"]
    for name, path in policies.items():
        command += ["--policy", f"{name}={path}"]
    with tempfile.TemporaryDirectory() as logs, start_server(
            command, f"http://127.0.0.1:{port}", Path(logs) / "serve.log",
            env=os.environ | {"TOKENIZERS_PARALLELISM": "false"}) as server:
        yield server.wait("/ready", cfg.server_timeout).url


async def _warm_then_measure(load: Any, point: Any) -> Any:
    """One unmeasured request first, so one-off costs of a new (policy, N) stay out of the figures."""
    from loadtest.runner import run_sweep

    await run_sweep(replace(load, requests=1), [point], show_progress=False)
    return (await run_sweep(load, [point], show_progress=False))[0]


def measure_server(policies: dict[str, Path], reward: Path, prompts: Sequence[str], cfg: CompareConfig,
                   points: Sequence[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """p50/p95 latency and device-seconds per answer at each (policy, best_of, extra request fields, e.g.
    early_rejection), in order, closed loop at concurrency 1."""
    from loadtest.runner import LoadConfig, Point
    from loadtest.stats import summarize

    logging.getLogger("httpx").setLevel(logging.WARNING)
    out: list[dict[str, Any]] = []
    with running_server(policies, reward, cfg, max(n for _, n, _ in points)) as url:
        for name, best_of, extra in tqdm(points, desc="measuring through bon serve", unit="point",
                                         dynamic_ncols=True):
            load = LoadConfig(url=url + "/v1/chat/completions", model=name, prompts=[user(p) for p in prompts],
                              stream=False, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              requests=cfg.requests, duration=cfg.requests * cfg.server_timeout,
                              timeout=cfg.server_timeout, extra=extra, seed=cfg.seed)
            result = asyncio.run(_warm_then_measure(load, Point(best_of=best_of)))
            s = summarize(result.records, result.wall, slo=cfg.server_timeout)
            if s["errors"]:
                log.warning("%s best_of=%d %s: %d of %d requests failed: %s", name, best_of, extra or "", s["errors"],
                            s["sent"], s["errors_by_status"])
            out.append({
                "latency_p50_s": s["latency_s_p50"], "latency_p95_s": s["latency_s_p95"],
                "device_seconds_per_answer": s["device_seconds_per_answer"],
                "device_seconds_source": s["device_seconds_source"],
                "server_generated_tokens_per_answer": s["generated_tokens_per_answer"],
                "server_requests": s["sent"], "server_errors": s["errors"]})
    return out


# ---------------------------------------------------------------------------------------------------------
# Frontier, break-even, overoptimisation


def pareto_frontier(rows: Sequence[dict[str, Any]], cost_key: str) -> list[str]:
    """Labels of the points no other point beats on both gold reward (higher) and cost (lower), cheapest first."""
    usable = sorted((r for r in rows if r.get(cost_key) is not None),
                    key=lambda r: (r[cost_key], -r["gold_reward_mean"]))
    frontier, best = [], -math.inf
    for r in usable:
        if r["gold_reward_mean"] > best:
            frontier.append(r["label"])
            best = r["gold_reward_mean"]
    return frontier


def training_cost(path: Path) -> dict[str, Any]:
    """Training device-seconds from the manifest: the trainer's wall time × its processes."""
    manifest = read_manifest(path)
    wall = manifest.figures.get("train_seconds_this_run")
    processes = int(manifest.hyperparameters.get("world_size", 1))
    history = path / "training_history.json"
    steps = len(json.loads(history.read_text())) if history.is_file() else None
    return {"device_seconds": None if wall is None else float(wall) * processes, "wall_seconds": wall,
            "processes": processes, "history_records": steps,
            "source": "manifest figures.train_seconds_this_run × hyperparameters.world_size" if wall is not None
            else f"unknown: the manifest has no train_seconds_this_run ({steps} records in training_history.json)"}


def _equal_gold(target: float, bon: Sequence[dict[str, Any]], cost_key: str) -> tuple[float, float | None] | None:
    """N of the cheapest Best-of-N on SFT whose gold reaches `target` (interpolated on log N between the measured
    N around it) and its cost per answer (linearly in N); None when no measured N reaches it. `bon`: sorted by N."""
    hit = next((k for k, r in enumerate(bon) if r["gold_reward_mean"] >= target), None)
    if hit is None:
        return None
    hi = bon[hit]
    if hit == 0:
        return float(hi["best_of"]), hi.get(cost_key)
    lo = bon[hit - 1]
    t = (target - lo["gold_reward_mean"]) / (hi["gold_reward_mean"] - lo["gold_reward_mean"])
    n_equal = math.exp(math.log(lo["best_of"]) + t * (math.log(hi["best_of"]) - math.log(lo["best_of"])))
    if lo.get(cost_key) is None or hi.get(cost_key) is None:
        return n_equal, None
    share = (n_equal - lo["best_of"]) / (hi["best_of"] - lo["best_of"])
    return n_equal, lo[cost_key] + share * (hi[cost_key] - lo[cost_key])


def _break_even_at(target: float, tuned_cost: float | None, train_seconds: float | None,
                   bon: Sequence[dict[str, Any]], cost_key: str) -> dict[str, Any]:
    """The break-even if the tuned policy's gold reward were `target`: its outcome and the figures behind it."""
    out: dict[str, Any] = {"gold_reward": target, "equal_gold_best_of": None, "bon_cost_per_answer": None,
                           "saving_per_answer": None, "answers": None}
    match = _equal_gold(target, bon, cost_key)
    if match is None:
        return out | {"outcome": "no N matches"}
    n_equal, bon_cost = match
    out |= {"equal_gold_best_of": n_equal, "bon_cost_per_answer": bon_cost}
    if n_equal == 1.0:
        return out | {"outcome": "SFT alone matches"}
    if bon_cost is None or tuned_cost is None:
        return out | {"outcome": "no cost measured"}
    saving = bon_cost - tuned_cost
    out["saving_per_answer"] = saving
    if saving <= 0:
        return out | {"outcome": "no saving"}
    if train_seconds is None:
        return out | {"outcome": "training cost unknown"}
    return out | {"outcome": "repaid", "answers": train_seconds / saving}


def _break_even_text(name: str, top: int, train_seconds: float | None, b: dict[str, Any]) -> str:
    outcome, n_equal = b["outcome"], b["equal_gold_best_of"]
    if outcome == "no N matches":
        return (f"No N matches: Best-of-N on SFT stays below {name}'s gold reward up to N = {top}, so there is no "
                f"break-even within the measured N ({name} beats every one of them).")
    if outcome == "SFT alone matches":
        return f"Never repaid: the SFT policy alone (N=1) already matches {name}'s gold reward."
    if outcome == "no cost measured":
        return (f"SFT BoN-{n_equal:.1f} matches {name}'s gold reward; no measured cost per answer (--no-server), "
                "so no break-even.")
    if outcome == "no saving":
        return f"Never repaid: SFT BoN-{n_equal:.1f} matches {name}'s gold reward at no higher cost per answer."
    if outcome == "training cost unknown":
        return (f"SFT BoN-{n_equal:.1f} matches {name}'s gold reward and costs {b['saving_per_answer']:.4g} "
                "device-s more per answer; training cost unknown.")
    return (f"SFT BoN-{n_equal:.1f} matches {name}'s gold reward at {b['saving_per_answer']:.4g} device-s more per "
            f"answer: {name}'s {train_seconds:.0f} device-s of training are repaid after {b['answers']:,.0f} answers.")


def _break_even_end(top: int, b: dict[str, Any]) -> str:
    """One end of the interval, in a few words."""
    outcome, n_equal = b["outcome"], b["equal_gold_best_of"]
    if outcome == "repaid":
        return f"{b['answers']:,.0f} answers (SFT BoN-{n_equal:.1f})"
    if outcome == "no N matches":
        return f"no N ≤ {top} matches"
    if outcome == "SFT alone matches":
        return "never repaid (the SFT policy alone matches)"
    if outcome == "no saving":
        return f"never repaid (SFT BoN-{n_equal:.1f} costs no more)"
    return f"SFT BoN-{n_equal:.1f} matches"


def break_even(tuned: dict[str, Any], bon: Sequence[dict[str, Any]], train_seconds: float | None,
               cost_key: str = "device_seconds_per_answer") -> dict[str, Any]:
    """After how many answers the tuned policy's training cost is repaid by serving it at N=1 instead of Best-of-N
    on SFT at equal gold reward: the cheapest N whose gold reaches the tuned policy's (interpolated on log N
    between the measured N around it; its cost linearly in N). The same is solved at both ends of the tuned
    policy's gold 95% CI (`gold_ci95_ends`), which is how uncertain the break-even is."""
    name, gold, ci = tuned["label"], tuned["gold_reward_mean"], tuned["gold_reward_ci95"]
    bon = sorted(bon, key=lambda r: r["best_of"])
    top = bon[-1]["best_of"]
    tuned_cost = tuned.get(cost_key)
    central = _break_even_at(gold, tuned_cost, train_seconds, bon, cost_key)
    lower, upper = (_break_even_at(g, tuned_cost, train_seconds, bon, cost_key) for g in (gold - ci, gold + ci))
    text = (f"{_break_even_text(name, top, train_seconds, central)} Over {name}'s gold 95% CI: at "
            f"{gold - ci:.3f}, {_break_even_end(top, lower)}; at {gold + ci:.3f}, {_break_even_end(top, upper)}.")
    return {"policy": tuned["policy"], "train_device_seconds": train_seconds, "tuned_cost_per_answer": tuned_cost,
            **central, "gold_reward_ci95": ci, "gold_ci95_ends": [lower, upper], "text": text}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of a − b over prompts, paired (both figures of a prompt come from its same answers), with its 95% CI
    and two-sided p-value: a paired test under the normal approximation, like every CI of the report."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2:
        raise ValueError("a paired test needs two prompts or more")
    mean, se = float(diff.mean()), float(diff.std(ddof=1)) / math.sqrt(len(diff))
    z = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return {"mean": mean, "ci95": 1.96 * se, "p_value": math.erfc(abs(z) / math.sqrt(2)), "prompts": len(diff)}


def fall_test(rows: Sequence[dict[str, Any]], seed: int) -> dict[str, Any] | None:
    """Does gold fall between its peak and the largest N? Every N is estimated from the same answers, so the test
    pairs the N by prompt; and the peak is a maximum picked from the data, so it is picked on one random half of
    the prompts and tested on the other. Also, for reference, the same difference on all prompts with the peak
    picked on them too (optimistic: the data chose what it tests). None with fewer than 4 prompts or 2 N."""
    rows = sorted(rows, key=lambda r: r["best_of"])
    gold = np.array([r["gold_per_prompt"] for r in rows])  # (N values, prompts)
    prompts = gold.shape[1]
    if len(rows) < 2 or prompts < 4:
        return None
    ns, last = [r["best_of"] for r in rows], len(rows) - 1
    order = np.random.default_rng(seed).permutation(prompts)
    picking, testing = np.sort(order[: prompts // 2]), np.sort(order[prompts // 2 :])
    peak = int(np.argmax(gold[:, picking].mean(axis=1)))
    peak_all = int(np.argmax(gold.mean(axis=1)))
    return {"picking_prompts": picking.tolist(), "peak_best_of": ns[peak], "max_best_of": ns[last],
            "held_out": paired_difference(gold[peak, testing], gold[last, testing]) if peak < last else None,
            "all_prompts_peak_best_of": ns[peak_all],
            "all_prompts": paired_difference(gold[peak_all], gold[last]) if peak_all < last else None}


def overoptimisation(rows: Sequence[dict[str, Any]], sft: Pool, seed: int) -> dict[str, Any]:
    """Gold and proxy gains of Best-of-N on SFT over N=1, in standard deviations of the SFT answers' scores, and
    the verdict: gold falls only when `fall_test`'s held-out half says so (p < 0.05)."""
    rows = sorted(rows, key=lambda r: r["best_of"])
    sd_gold, sd_rm = float(sft.gold.std()) or 1.0, float(sft.rm.std()) or 1.0
    gold = [(r["gold_reward_mean"] - rows[0]["gold_reward_mean"]) / sd_gold for r in rows]
    proxy = [(r["rm_reward_mean"] - rows[0]["rm_reward_mean"]) / sd_rm for r in rows]
    ns = [r["best_of"] for r in rows]
    test = fall_test(rows, seed)
    held = test and test["held_out"]
    if len(rows) < 2 or proxy[-1] <= proxy[max(0, len(rows) - 2)]:
        verdict = "the proxy does not keep rising with N"
    elif held and held["mean"] > 0 and held["p_value"] < 0.05:
        verdict = f"gold falls after N={test['peak_best_of']} while the proxy keeps rising: overoptimisation"
    elif gold[-1] - gold[-2] < 0.25 * (proxy[-1] - proxy[-2]):
        verdict = f"gold flattens while the proxy keeps rising (last doubling: gold {gold[-1] - gold[-2]:+.2f} σ, " \
                  f"proxy {proxy[-1] - proxy[-2]:+.2f} σ)"
    else:
        verdict = f"gold keeps rising with the proxy up to N={ns[-1]}: no overoptimisation in this range"
    return {"best_of": ns, "gold_gain_sd": gold, "proxy_gain_sd": proxy, "gold_sd": sd_gold, "proxy_sd": sd_rm,
            "gold_peak_best_of": ns[int(np.argmax(gold))], "fall_test": test, "verdict": verdict}


# ---------------------------------------------------------------------------------------------------------
# The run


def _tuned_paths(cfg: CompareConfig) -> dict[str, Path]:
    named = {"dpo": cfg.dpo, "ppo": cfg.ppo}
    out = {}
    for name, path in named.items():
        if path is None:
            default = cfg.sft.parent / name
            if not default.is_dir():
                log.warning("no %s checkpoint at %s: left out of the comparison", name, default)
                continue
            path = default
        out[name] = Path(path)
    return out


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the whole comparison and write report.md, results.json and the plots into `cfg.out`."""
    from evaluation.plots import write_plots, write_report

    started = time.time()
    tuned_paths = _tuned_paths(cfg)
    missing = [str(p) for p in (cfg.sft, cfg.rm, *tuned_paths.values()) if not p.is_dir()]
    if missing:
        raise SystemExit("bon eval compare: checkpoints not found: " + ", ".join(missing) + " (build them with "
                         "`bon build-default --with-tuned`, or name them with --sft/--rm/--dpo/--ppo)")
    prompts = [p.text for p in world.prompts(cfg.split, cfg.prompts, cfg.seed)]
    reward = load_reward_model(cfg.rm)
    sft_model, tokenizer = load_policy(cfg.sft)
    pools = {"sft": build_pool("sft", sft_model, tokenizer, prompts, cfg.sft_samples, cfg, cfg.seed, reward)}
    for i, (name, path) in enumerate(tuned_paths.items(), start=1):
        model, tuned_tokenizer = load_policy(path)
        if tuned_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SystemExit(f"bon eval compare: {path} has another tokenizer than the SFT policy; the KL to SFT "
                             "needs the same one")
        pools[name] = build_pool(name, model, tokenizer, prompts, cfg.tuned_samples, cfg, cfg.seed + i, reward,
                                 reference=sft_model)
    rows = [method_row(pools["sft"], n, pools["sft"]) for n in cfg.best_of]
    rows += [method_row(pools[name], n, pools["sft"]) for name in tuned_paths for n in cfg.tuned_best_of]

    early: dict[str, Any] = {"skipped": "--no-early-rejection"}
    if cfg.early_rejection:
        from evaluation.early_rejection import early_rejection_results, prefix_scores

        configs = cfg.er_configs()
        prefix = prefix_scores(pools["sft"], prompts, tokenizer, reward, sorted({k for _, k, _ in configs}))
        early = early_rejection_results(pools["sft"], prefix, configs, cfg.er_target_best_of)

    server: dict[str, Any] = {"measured": False, "reason": "skipped (--no-server)"}
    if cfg.server:
        # Early rejection's measured points: latency and generated tokens from the server, gold from the pool.
        early_measured = [r for r in early.get("rows", []) if (r["best_of"], r["after_tokens"], r["keep"])
                          in cfg.er_server]
        points = [(r["policy"], r["best_of"], {}) for r in rows]
        points += [(r["policy"], r["best_of"], {"early_rejection": {"after_tokens": r["after_tokens"],
                                                                    "keep": r["keep"]}}) for r in early_measured]
        measured = measure_server({"sft": cfg.sft, **tuned_paths}, cfg.rm, prompts, cfg, points)
        for r, figures in zip([*rows, *early_measured], measured, strict=True):
            r.update(figures)
        server = {"measured": True, "requests_per_point": cfg.requests, "concurrency": 1, "device": cfg.device,
                  "cpu_count": os.cpu_count(), "stream": False,
                  "cost": "device-seconds per answer = the server's bon.timings sample_seconds + score_seconds"}
    cost_key = "device_seconds_per_answer" if server["measured"] else "tokens_per_answer"
    costs = {name: training_cost(path) for name, path in tuned_paths.items()}
    sft_rows = [r for r in rows if r["policy"] == "sft"]
    results: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "checkpoints": {name: {"path": str(path), "version": read_manifest(path).version}
                        for name, path in {"sft": cfg.sft, "rm": cfg.rm, **tuned_paths}.items()},
        "prompts": {"split": cfg.split, "count": len(prompts), "seed": cfg.seed, "examples": prompts[:3]},
        "methods": rows,
        "server": server,
        "pareto": {"cost": cost_key, "frontier": pareto_frontier(rows, cost_key)},
        "training_cost": costs,
        "break_even": {name: break_even(next(r for r in rows if r["policy"] == name and r["best_of"] == 1), sft_rows,
                                        costs[name]["device_seconds"])
                       for name in tuned_paths if 1 in cfg.tuned_best_of},
        "overoptimisation": overoptimisation(sft_rows, pools["sft"], cfg.seed),
        "early_rejection": early,
        "seconds": round(time.time() - started, 1),
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    results["files"] = ["report.md", "results.json", *(p.name for p in write_plots(results, cfg.out))]
    write_report(results, cfg.out / "report.md")
    write_json_atomic(cfg.out / "results.json", results)
    results["out"] = str(cfg.out)
    return results
