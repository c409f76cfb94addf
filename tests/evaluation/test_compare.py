"""`bon eval compare`: the order-statistics estimators against brute force, the KL bound, frontier and
break-even by hand, and the whole command end to end on tiny checkpoints, through a real server."""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import world
from evaluation.compare import (
    Pool,
    bon_kl_plugin,
    bon_mean,
    bon_weights,
    bon_win_rate_within,
    break_even,
    build_pool,
    compare,
    fall_test,
    kl_bound,
    load_reward_model,
    method_row,
    overoptimisation,
    paired_difference,
    pareto_frontier,
)
from evaluation.compare_config import CompareConfig
from evaluation.early_rejection import (
    bon_pick_kept,
    early_rejection_results,
    er_mean,
    er_tokens,
    er_weights,
    kept_count,
    prefix_rank_correlation,
    prefix_scores,
)
from evaluation.plots import write_plots, write_report
from models.checkpoint import write_checkpoint
from training.evaluate import load_policy
from training.rm import score_texts

REPO = Path(__file__).resolve().parents[2]


def _beats(a: float, b: float) -> Fraction:
    return Fraction(1) if a > b else Fraction(1, 2) if a == b else Fraction(0)


def test_best_of_n_estimators_match_enumeration_of_every_subset():
    """Over all N-subsets of 7 answers (ties in gold included), the estimators equal the exact averages."""
    rng = np.random.default_rng(3)
    rm, gold = rng.normal(size=7), rng.integers(0, 3, size=7).astype(float)
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        winners = [max(s, key=lambda i: rm[i]) for s in subsets]
        exact_gold = sum(Fraction(gold[w]) for w in winners) / len(subsets)
        assert bon_mean(rm[None], gold[None], n)[0] == pytest.approx(float(exact_gold), abs=1e-12)
        assert bon_weights(7, n).sum() == pytest.approx(1.0, abs=1e-12)
        if n < 7:  # the reference answer is one outside the subset
            pairs = [_beats(gold[w], gold[j]) for s, w in zip(subsets, winners, strict=True)
                     for j in range(7) if j not in s]
            exact_win = sum(pairs) / len(pairs)
            assert bon_win_rate_within(rm, gold, n) == pytest.approx(float(exact_win), abs=1e-12)
    assert bon_mean(rm[None], gold[None], 1)[0] == pytest.approx(gold.mean())
    assert bon_mean(rm[None], gold[None], 7)[0] == gold[np.argmax(rm)]
    assert bon_win_rate_within(rm, gold, 1) == pytest.approx(0.5)


def test_early_rejection_estimators_match_enumeration_of_every_subset():
    """Over all M-subsets of 7 answers, with ties in the prefix score broken by sample order as the server breaks
    them, the closed forms equal the exact averages: the answer returned, the tokens, Best-of-M's pick kept."""
    rng = np.random.default_rng(5)
    prefix, rm = rng.integers(0, 3, size=7).astype(float), rng.normal(size=7)
    tokens, k = rng.integers(1, 20, size=7).astype(float), 6
    for m in range(1, 8):
        subsets = list(itertools.combinations(range(7), m))
        for keep in range(1, m + 1):
            returned, spent, same = np.zeros(7), Fraction(0), 0
            for subset in subsets:
                kept = sorted(subset, key=lambda i: (-prefix[i], i))[:keep]
                returned[max(kept, key=lambda i: rm[i])] += 1
                spent += sum(Fraction(tokens[i] if i in kept else min(tokens[i], k)) for i in subset)
                same += max(subset, key=lambda i: rm[i]) in kept
            assert er_weights(prefix, rm, m, keep) == pytest.approx(returned / len(subsets), abs=1e-12)
            assert er_tokens(prefix[None], tokens[None], k, m, keep)[0] == pytest.approx(float(spent / len(subsets)))
            assert bon_pick_kept(prefix[None], rm[None], m, keep)[0] == pytest.approx(same / len(subsets))
    # Keeping all M is Best-of-M.
    gold = rng.normal(size=(1, 7))
    assert er_mean(prefix[None], rm[None], gold, 4, 4) == pytest.approx(bon_mean(rm[None], gold, 4))
    assert [kept_count(16, f) for f in (0.125, 0.25, 0.3)] == [2, 4, 5]


def _pool(prefix_of: Any) -> tuple[Pool, np.ndarray]:
    """40 prompts × 12 answers whose gold is their RM score, 30 tokens each, with a prefix score of `prefix_of(rm)`."""
    rng = np.random.default_rng(11)
    rm = rng.normal(size=(40, 12)) + 0.3 * rng.normal(size=(40, 1))  # prompts differ a little
    texts = [[f"answer {i}" for i in range(12)] for _ in range(40)]
    return Pool("sft", texts, np.full((40, 12), 30.0), rm, rm.copy()), prefix_of(rm)


def test_early_rejection_wins_when_prefixes_rank_well_and_loses_when_they_rank_inversely():
    good, prefix = _pool(lambda rm: rm)  # the prefix foresees the full score exactly
    results = early_rejection_results(good, {4: prefix}, [(8, 4, 0.25), (4, 4, 0.25)], target_best_of=8)
    er, small = results["rows"]
    assert er["gold_reward_mean"] == pytest.approx(results["target"]["gold_reward_mean"])  # BoN-8's very answer
    assert er["bon_pick_kept"] == pytest.approx(1.0) and er["vs_target"]["mean"] == pytest.approx(0.0, abs=1e-12)
    # 8 candidates to 4 tokens, 2 of them on to 30: 6·4 + 2·30 = 84 tokens, 0.35 of BoN-8's 240.
    assert er["tokens_per_answer"] == pytest.approx(84.0) and er["tokens_vs_target"] == pytest.approx(0.35)
    assert er["meets_target"] and er["target_miss"] == [] and results["meeting_target"] == [er["label"]]
    assert er["equal_tokens_best_of"] == pytest.approx(2.8)
    assert er["vs_equal_tokens_bon"]["mean"] > 0 and er["vs_equal_tokens_bon"]["p_value"] < 1e-6  # beats BoN-2.8
    assert small["target_miss"] == ["gold below the target's CI"]  # BoN-4's answer: far below BoN-8 here
    assert results["prefix_correlation"] == [{"after_tokens": 4, "spearman_mean": pytest.approx(1.0),
                                              "spearman_ci95": pytest.approx(0.0), "prompts": 40, "tied_prompts": 0}]

    bad, inverse = _pool(lambda rm: -rm)  # the prefix ranks the answers upside down: the winners are cut
    lost = early_rejection_results(bad, {4: inverse}, [(8, 4, 0.25)], target_best_of=8)
    row = lost["rows"][0]
    assert row["bon_pick_kept"] == 0.0 and not row["meets_target"]
    assert row["gold_reward_mean"] < bon_mean(bad.rm, bad.gold, 1).mean()  # worse than no selection at all
    assert row["vs_equal_tokens_bon"]["mean"] < 0 and row["vs_equal_tokens_bon"]["p_value"] < 1e-6
    assert lost["prefix_correlation"][0]["spearman_mean"] == pytest.approx(-1.0)
    tied = prefix_rank_correlation(np.zeros((3, 5)), np.arange(15.0).reshape(3, 5))
    assert (tied["spearman_mean"], tied["prompts"], tied["tied_prompts"]) == (None, 0, 3)


def test_compare_config_checks_early_rejection():
    cfg = CompareConfig(er_best_of="16,32", er_after_tokens="8", er_keep="0.25,0.125", er_server="16:8:0.25,64:4:0.5")
    assert cfg.er_server == ((16, 8, 0.25), (64, 4, 0.5))
    assert cfg.er_configs() == [(16, 8, 0.125), (16, 8, 0.25), (32, 8, 0.125), (32, 8, 0.25), (64, 4, 0.5)]
    assert CompareConfig(er_server="").er_server == ()
    for bad in ({"er_best_of": "128"}, {"er_keep": "1"}, {"er_server": "16:8"}, {"er_target_best_of": 12},
                {"er_server": "1:8:0.5"}):
        with pytest.raises(ValueError):
            CompareConfig(**bad)
    assert CompareConfig(er_best_of="128", early_rejection=False).er_best_of == (128,)
    assert CompareConfig(er_server="66:8:0.25", server=False).er_configs()[-1] == (64, 32, 0.5)  # not measured


def test_kl_bound_and_plugin_estimate():
    assert [round(kl_bound(n), 4) for n in (1, 2, 4, 64)] == [0.0, round(math.log(2) - 0.5, 4), 0.6363, 3.1745]
    rng = np.random.default_rng(0)
    distinct = [f"answer {i}" for i in range(2000)]
    rm = rng.normal(size=2000)
    for n in (1, 4, 16):  # all answers distinct: the plug-in tends to the analytic value
        assert bon_kl_plugin(rm, distinct, n) == pytest.approx(kl_bound(n), abs=0.01)
    # Two equally likely answers: KL is at most log 2 whatever N (Beirami et al. 2024's counterexample).
    two = ["good", "bad"] * 10
    scores = [1.0, 0.0] * 10
    assert bon_kl_plugin(scores, two, 64) == pytest.approx(math.log(2), abs=1e-9)
    assert bon_kl_plugin(scores, two, 2) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert bon_kl_plugin(scores, two, 1) == 0.0


def _row(policy: str, n: int, gold: float, cost: float | None, ci: float = 0.0) -> dict:
    return {"label": f"{policy}-{n}", "policy": policy, "best_of": n, "gold_reward_mean": gold,
            "gold_reward_ci95": ci, "device_seconds_per_answer": cost}


def test_pareto_frontier_and_break_even_by_hand():
    bon = [_row("sft", 1, 0.0, 1.0), _row("sft", 4, 0.4, 4.0), _row("sft", 16, 0.6, 16.0)]
    tuned = _row("dpo", 1, 0.5, 1.0, ci=0.05)
    points = [*bon, tuned, _row("ppo", 1, 0.3, 2.0), _row("ppo", 2, -1.0, 0.5)]
    assert pareto_frontier(points, "device_seconds_per_answer") == ["ppo-2", "dpo-1", "sft-16"]
    b = break_even(tuned, bon, train_seconds=100.0)
    assert b["outcome"] == "repaid"
    assert b["equal_gold_best_of"] == pytest.approx(8.0)  # halfway from 0.4 to 0.6 on log N: N = 8
    assert b["bon_cost_per_answer"] == pytest.approx(8.0)  # cost linear in N between 4 and 16
    assert b["answers"] == pytest.approx(100.0 / 7.0)
    # The CI's ends, 0.45 and 0.55, are a quarter and three quarters of the way on log N: N = 4·4^¼ and 4·4^¾.
    lower, upper = b["gold_ci95_ends"]
    assert (lower["gold_reward"], upper["gold_reward"]) == (pytest.approx(0.45), pytest.approx(0.55))
    assert lower["equal_gold_best_of"] == pytest.approx(4 * math.sqrt(2))
    assert upper["equal_gold_best_of"] == pytest.approx(8 * math.sqrt(2))
    assert lower["answers"] == pytest.approx(100.0 / (4 * math.sqrt(2) - 1.0))  # less gold: a smaller saving
    assert upper["answers"] == pytest.approx(100.0 / (8 * math.sqrt(2) - 1.0))
    assert (f"Over dpo-1's gold 95% CI: at 0.450, {100 / (4 * math.sqrt(2) - 1):,.0f} answers (SFT BoN-5.7); "
            f"at 0.550, {100 / (8 * math.sqrt(2) - 1):,.0f} answers (SFT BoN-11.3).") in b["text"]
    # A CI wide enough to reach both other outcomes: below SFT's N=1, above every N.
    wide = break_even(_row("dpo", 1, 0.5, 1.0, ci=0.55), bon, train_seconds=100.0)
    assert [e["outcome"] for e in wide["gold_ci95_ends"]] == ["SFT alone matches", "no N matches"]
    assert all(e["answers"] is None for e in wide["gold_ci95_ends"])
    assert "at -0.050, never repaid (the SFT policy alone matches); at 1.050, no N ≤ 16 matches." in wide["text"]
    never = break_even(_row("ppo", 1, 0.9, 1.0), bon, train_seconds=100.0)
    assert never["outcome"] == "no N matches" and never["answers"] is None
    assert never["text"].startswith("No N matches: Best-of-N on SFT stays below ppo-1's gold reward up to N = 16")
    assert "0 answers" not in never["text"]
    worse = break_even(_row("ppo", 1, -0.1, 1.0), bon, train_seconds=100.0)
    assert worse["answers"] is None and "SFT policy alone (N=1) already matches" in worse["text"]
    dear = break_even(_row("ppo", 1, 0.5, 9.0), bon, train_seconds=100.0)
    assert dear["answers"] is None and dear["text"].startswith("Never repaid")
    assert break_even(tuned, bon, train_seconds=None)["answers"] is None


def test_paired_difference_against_a_hand_computation():
    # a − b = (1, 0, 2, 3): mean 1.5, sample sd √(5/3), standard error √(5/3) / 2.
    d = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 1.0, 1.0])
    se = statistics.stdev([1.0, 0.0, 2.0, 3.0]) / 2
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert (d["mean"], d["ci95"], d["prompts"]) == (1.5, pytest.approx(1.96 * se), 4)
    assert d["p_value"] == pytest.approx(2 * (1 - statistics.NormalDist().cdf(1.5 / se)))  # 0.020
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0
    assert paired_difference([2.0, 3.0], [1.0, 2.0])["p_value"] == 0.0  # the same gain on every prompt
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0])


def _sft_rows(per_prompt: dict[int, np.ndarray]) -> list[dict]:
    """Best-of-N rows from per-prompt gold; the proxy rises by 1 per doubling of N."""
    return [{"best_of": n, "gold_per_prompt": g.tolist(), "gold_reward_mean": float(g.mean()),
             "rm_reward_mean": math.log2(n)} for n, g in per_prompt.items()]


def test_the_fall_is_tested_paired_on_prompts_the_peak_was_not_picked_on():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)  # prompts differ a lot; the N differ by little, the same way on every prompt
    rows = _sft_rows({1: base, 2: base + 0.5 + 0.01 * rng.normal(size=40), 4: base + 0.4 + 0.01 * rng.normal(size=40)})
    test = fall_test(rows, seed=3)
    picking = test["picking_prompts"]
    testing = sorted(set(range(40)) - set(picking))
    assert len(picking) == 20 and picking == sorted(picking) and picking != list(range(20))
    gold = {r["best_of"]: np.array(r["gold_per_prompt"]) for r in rows}
    assert test["peak_best_of"] == max(gold, key=lambda n: gold[n][picking].mean()) == 2
    diff = gold[2][testing] - gold[4][testing]
    assert test["held_out"]["mean"] == pytest.approx(diff.mean())
    assert test["held_out"]["ci95"] == pytest.approx(1.96 * statistics.stdev(diff.tolist()) / math.sqrt(20))
    assert test["held_out"]["p_value"] < 1e-6  # 0.1 apart with noise 0.014: unmistakable, though the prompts vary
    assert test["all_prompts"]["mean"] == pytest.approx((gold[2] - gold[4]).mean())
    assert fall_test(rows, seed=4)["picking_prompts"] != picking  # the split follows the seed
    assert fall_test(rows[:1], seed=3) is None and fall_test(_sft_rows({1: base[:3], 2: base[:3]}), 0) is None


def test_overoptimisation_verdicts():
    pool = Pool("sft", [["a", "b"]], np.ones((1, 2)), np.array([[0.0, 2.0]]), np.array([[0.0, 2.0]]))
    rng = np.random.default_rng(1)
    base = rng.normal(size=40)

    def rows(means: list[float], noise: float = 0.01) -> list[dict]:
        return _sft_rows({2**i: base + m + noise * rng.normal(size=40) for i, m in enumerate(means)})

    falls = overoptimisation(rows([0.0, 0.5, 0.2]), pool, seed=0)
    assert "falls after N=2" in falls["verdict"] and falls["fall_test"]["held_out"]["p_value"] < 0.05
    # The same means, but per-prompt differences far noisier than the fall: not significant, so no fall is claimed.
    noisy = overoptimisation(rows([0.0, 0.5, 0.45], noise=3.0), pool, seed=0)
    assert noisy["fall_test"]["peak_best_of"] == 2 and noisy["fall_test"]["held_out"]["p_value"] > 0.05
    assert "falls" not in noisy["verdict"] and "flattens" in noisy["verdict"]
    assert "flattens" in overoptimisation(rows([0.0, 0.5, 0.51]), pool, seed=0)["verdict"]
    assert "keeps rising" in overoptimisation(rows([0.0, 0.5, 1.0]), pool, seed=0)["verdict"]



def _synthetic_results(out: Path) -> tuple[dict, Pool]:
    """A whole comparison from made-up answers, no models: gold peaks where the RM is 1 (so Best-of-N on SFT
    overoptimises the RM), in whole points as the judge's; DPO drifts 2 nats from SFT."""
    rng = np.random.default_rng(7)
    prompts = 40

    def pool(name: str, n: int, shift: float, log_ratio: np.ndarray | None = None) -> Pool:
        rm = rng.normal(shift, 1.0, size=(prompts, n))
        gold = np.round(2 * rm - rm**2 + 0.3 * rng.normal(size=(prompts, n)))
        texts = [[f"{name} answer {i}" for i in range(n)] for _ in range(prompts)]
        return Pool(name, texts, np.full((prompts, n), 10.0), rm, gold, log_ratio)

    sft = pool("sft", 17, 0.0)
    dpo = pool("dpo", 4, 0.5, log_ratio=rng.normal(2.0, 0.5, size=(prompts, 4)))
    rows = [method_row(sft, n, sft) for n in (1, 2, 4, 8, 16)] + [method_row(dpo, n, sft) for n in (1, 4)]
    for r in rows:
        r["device_seconds_per_answer"] = 0.01 * r["best_of"] * (0.8 if r["policy"] == "dpo" else 1.0)
    sft_rows = rows[:5]
    results = {
        "config": {"seed": 0, "sft_samples": 17, "tuned_samples": 4, "temperature": 1.0, "max_new_tokens": 96},
        "checkpoints": {name: {"version": f"{name}-0"} for name in ("sft", "rm", "dpo")},
        "prompts": {"count": prompts, "split": "test"}, "server": {"measured": False, "reason": "synthetic"},
        "methods": rows, "pareto": {"cost": "device_seconds_per_answer",
                                    "frontier": pareto_frontier(rows, "device_seconds_per_answer")},
        "training_cost": {"dpo": {"device_seconds": 50.0}},
        "break_even": {"dpo": break_even(rows[5], sft_rows, 50.0)},
        "overoptimisation": overoptimisation(sft_rows, sft, seed=0), "seconds": 1.0,
        "early_rejection": early_rejection_results(sft, {4: sft.rm + rng.normal(size=sft.rm.shape)},
                                                   [(8, 4, 0.25), (16, 4, 0.125)], target_best_of=16)}
    results["files"] = ["report.md", *(p.name for p in write_plots(results, out))]
    write_report(results, out / "report.md")
    return results, dpo


def test_report_states_its_uncertainty_on_synthetic_answers(tmp_path: Path):
    results, dpo = _synthetic_results(tmp_path)
    report = (tmp_path / "report.md").read_text()
    rows = {r["label"]: r for r in results["methods"]}
    for r in rows.values():  # per-prompt gold kept for the paired tests; its mean is the row's
        assert len(r["gold_per_prompt"]) == 40 and np.mean(r["gold_per_prompt"]) == pytest.approx(r["gold_reward_mean"])
    # A tuned policy's Best-of-N: its KL is the selection's plus the drift, and the report says which is which.
    tuned = rows["DPO + BoN-4"]
    assert tuned["kl_method"] == "bon-plugin+monte-carlo" and tuned["kl_bound"] == pytest.approx(kl_bound(4))
    drift = bon_mean(dpo.rm, dpo.log_ratio, 4)
    plugin = [bon_kl_plugin(r, t, 4) for r, t in zip(dpo.rm, dpo.texts, strict=True)]
    assert tuned["kl_drift"] == pytest.approx(drift.mean()) and tuned["kl_drift"] == pytest.approx(2.0, abs=0.3)
    assert tuned["kl_estimate"] == pytest.approx(np.mean(plugin) + drift.mean())
    assert f"(bound {kl_bound(4):.2f} + MC drift {tuned['kl_drift']:.2f}) |" in report
    assert rows["DPO"]["kl_bound"] == 0.0 and rows["DPO"]["kl_drift"] == pytest.approx(rows["DPO"]["kl_estimate"])
    assert f"{rows['DPO']['kl_estimate']:.2f} ± {rows['DPO']['kl_estimate_ci95']:.2f} (Monte Carlo) |" in report
    assert "| SFT BoN-16 | 16 |" in report and f"(bound {kl_bound(16):.2f}) |" in report
    # The break-even with its interval, and the fall test: split, held-out difference, p-value.
    assert results["break_even"]["dpo"]["text"] in report and "Over DPO's gold 95% CI: at " in report
    test = results["overoptimisation"]["fall_test"]
    assert "split at random (seed 0) into 20 and 20" in report
    assert f"gold peaks at N={test['peak_best_of']}" in report
    held = test["held_out"]
    low, high = held["mean"] - held["ci95"], held["mean"] + held["ci95"]
    assert f"is {held['mean']:+.3f} (95% CI {low:+.3f} to {high:+.3f}, p = {held['p_value']:.2g})" in report
    assert results["overoptimisation"]["verdict"] in report
    # Early rejection: every configuration's row, its verdict on the target, and the prefix correlation.
    early = results["early_rejection"]
    for r in early["rows"]:
        assert f"| {r['label']} | {r['kept']} | {r['gold_reward_mean']:.3f} ± {r['gold_reward_ci95']:.3f} |" in report
    assert f"**{len(early['meeting_target'])} of 2 configurations meet the target**" in report
    rho = early["prefix_correlation"][0]
    assert f"| 4 | {rho['spearman_mean']:.3f} ± {rho['spearman_ci95']:.3f} | 40 | 0 |" in report
    assert "![early rejection vs Best-of-N](early_rejection.png)" in report
    assert "early_rejection.png" in results["files"]
    assert sorted(results["files"]) == sorted(p.name for p in tmp_path.iterdir())


def test_bon_1_is_the_plain_mean_and_a_policy_has_no_kl_to_itself(tiny_sft: Path, tiny_rm: Path):
    model, tokenizer = load_policy(tiny_sft)
    prompts = [p.text for p in world.prompts("test", 3, 0)]
    cfg = CompareConfig(prompts=3, sft_samples=5, tuned_samples=5, best_of=(1, 4), tuned_best_of=(1, 4),
                        max_new_tokens=24, early_rejection=False)
    reward = load_reward_model(tiny_rm)
    sft = build_pool("sft", model, tokenizer, prompts, 5, cfg, 0, reward)
    assert sft.gold[0, 0] == world.score(prompts[0], sft.texts[0][0])
    # Early rejection's prefixes: past an answer's end, its whole text and the pool's very score.
    prefix = prefix_scores(sft, prompts, tokenizer, reward, [1, 25])
    assert np.array_equal(prefix[25], sft.rm)
    first = tokenizer.decode(sft.token_ids[0][0][:1], skip_special_tokens=True).strip()
    assert prefix[1][0, 0] == pytest.approx(score_texts(*reward, [(prompts[0], first)])[0], abs=1e-5)
    row = method_row(sft, 1, sft)
    assert row["gold_reward_mean"] == pytest.approx(sft.gold.mean())
    assert row["rm_reward_mean"] == pytest.approx(sft.rm.mean())
    assert (row["win_rate_vs_sft"], row["kl_estimate"], row["kl_bound"]) == (pytest.approx(0.5), 0.0, 0.0)
    same = build_pool("twin", model, tokenizer, prompts, 5, cfg, 1, reward, reference=model)
    assert np.abs(same.log_ratio).max() < 1e-4
    assert method_row(same, 1, sft)["kl_estimate"] == pytest.approx(0.0, abs=1e-4)


def perturbed_policy(sft: Path, out: Path, method: str, seed: int, figures: dict) -> Path:
    """The SFT policy with noise on its weights, saved as a tuned checkpoint: KL to SFT above zero, quickly."""
    model = AutoModelForCausalLM.from_pretrained(str(sft), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(sft))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))

    def save(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    write_checkpoint(out, save, kind="policy", method=method, hyperparameters={"world_size": 2}, figures=figures)
    return out


@pytest.fixture(scope="module")
def tuned(tiny_sft: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Stand-ins for DPO (12 s of training on 2 processes) and PPO (no training time in its manifest)."""
    root = tmp_path_factory.mktemp("tuned")
    return (perturbed_policy(tiny_sft, root / "dpo", "dpo", 1, {"train_seconds_this_run": 12.0}),
            perturbed_policy(tiny_sft, root / "ppo", "ppo", 2, {}))


def test_compare_without_server_costs_tokens_and_skips_break_even(tiny_sft: Path, tiny_rm: Path,
                                                                 tuned: tuple[Path, Path], tmp_path: Path):
    cfg = CompareConfig(out=tmp_path, sft=tiny_sft, rm=tiny_rm, dpo=tuned[0], ppo=tuned[1], prompts=3,
                        sft_samples=3, tuned_samples=2, best_of="1,2", tuned_best_of="1", max_new_tokens=16,
                        server=False, er_best_of="2", er_after_tokens="4", er_keep="0.5", er_target_best_of=2)
    (tmp_path / "gold_vs_latency.png").write_bytes(b"from an earlier run with the server")
    results = compare(cfg)
    assert results["server"] == {"measured": False, "reason": "skipped (--no-server)"}
    assert results["pareto"]["cost"] == "tokens_per_answer"
    assert "gold_vs_latency.png" not in results["files"] and not (tmp_path / "gold_vs_latency.png").exists()
    assert sorted(results["files"]) == sorted(p.name for p in tmp_path.iterdir())
    assert all(r.get("latency_p50_s") is None for r in results["methods"])
    assert all(b["answers"] is None for b in results["break_even"].values())
    assert "No test of a fall in gold: it needs at least 4 prompts" in (tmp_path / "report.md").read_text()
    assert "not measured (skipped (--no-server))" in (tmp_path / "report.md").read_text()
    assert [r["label"] for r in results["early_rejection"]["rows"]] == ["ER M=2 k=4 f=0.5"]
    assert "early_rejection.png" in results["files"]


def test_bon_eval_compare_end_to_end(tiny_sft: Path, tiny_rm: Path, tuned: tuple[Path, Path], tmp_path: Path):
    """The command as users run it, on 6 prompts, through a real server with 2 requests per point."""
    dpo, ppo = tuned
    out = tmp_path / "report"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "bon.cli", "eval", "compare", "--sft", str(tiny_sft), "--rm", str(tiny_rm),
         "--dpo", str(dpo), "--ppo", str(ppo), "--out", str(out), "--prompts", "6", "--sft-samples", "9",
         "--tuned-samples", "4", "--best-of", "1,2,4,8", "--tuned-best-of", "1,2", "--max-new-tokens", "24",
         "--requests", "2", "--er-best-of", "8", "--er-after-tokens", "4,8", "--er-keep", "0.25",
         "--er-server", "8:4:0.25", "--er-target-best-of", "8", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    results = json.loads((out / "results.json").read_text())
    assert printed["methods"] == results["methods"]
    assert sorted(results["files"]) == sorted(p.name for p in out.iterdir())
    assert {"report.md", "reward_vs_kl.png", "overoptimisation.png", "gold_vs_cost.png",
            "gold_vs_latency.png"} <= set(results["files"])
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in results["files"] if name.endswith(".png"))

    rows = {(r["policy"], r["best_of"]): r for r in results["methods"]}
    assert sorted(rows) == [("dpo", 1), ("dpo", 2), ("ppo", 1), ("ppo", 2), ("sft", 1), ("sft", 2), ("sft", 4),
                            ("sft", 8)]
    assert rows[("sft", 1)]["win_rate_vs_sft"] == pytest.approx(0.5)
    assert rows[("sft", 1)]["kl_estimate"] == 0.0
    for n in (2, 4, 8):
        assert rows[("sft", n)]["kl_bound"] == pytest.approx(math.log(n) - (n - 1) / n)
        assert rows[("sft", n)]["kl_estimate"] <= rows[("sft", n)]["kl_bound"] + 1e-9
        assert rows[("sft", n)]["tokens_per_answer"] == pytest.approx(n * rows[("sft", 1)]["tokens_per_answer"])
    assert rows[("sft", 8)]["rm_reward_mean"] >= rows[("sft", 1)]["rm_reward_mean"]  # BoN raises the proxy
    assert rows[("dpo", 1)]["kl_method"] == "monte-carlo"
    assert rows[("dpo", 1)]["kl_bound"] == 0.0
    assert rows[("dpo", 1)]["kl_drift"] == pytest.approx(rows[("dpo", 1)]["kl_estimate"])
    assert rows[("dpo", 2)]["kl_method"] == "bon-plugin+monte-carlo"
    assert all(len(r["gold_per_prompt"]) == 6 for r in results["methods"])
    assert len(results["overoptimisation"]["fall_test"]["picking_prompts"]) == 3
    for r in results["methods"]:  # every point measured through the server, none failed
        assert r["server_requests"] == 2 and r["server_errors"] == 0
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"] and r["device_seconds_per_answer"] > 0
    assert results["pareto"]["cost"] == "device_seconds_per_answer"
    assert set(results["pareto"]["frontier"]) <= {r["label"] for r in results["methods"]}
    assert results["training_cost"]["dpo"]["device_seconds"] == 24.0  # 12 s × 2 processes
    assert results["training_cost"]["ppo"]["device_seconds"] is None
    assert set(results["break_even"]) == {"dpo", "ppo"}
    report = (out / "report.md").read_text()
    assert "![gold vs proxy reward vs N](overoptimisation.png)" in report
    assert "| DPO + BoN-2" in report and results["overoptimisation"]["verdict"] in report
    assert "split at random (seed 0) into 3 and 3" in report
    assert all("gold 95% CI: at " in b["text"] for b in results["break_even"].values())
    # Early rejection: both k estimated offline; the measured one also through the server, which cut candidates.
    early = {(r["best_of"], r["after_tokens"], r["keep"]): r for r in results["early_rejection"]["rows"]}
    assert sorted(early) == [(8, 4, 0.25), (8, 8, 0.25)]
    measured, offline = early[(8, 4, 0.25)], early[(8, 8, 0.25)]
    assert measured["kept"] == 2 and measured["server_requests"] == 2 and measured["server_errors"] == 0
    assert 0 < measured["latency_p50_s"] and "latency_p50_s" not in offline
    assert measured["server_generated_tokens_per_answer"] > 0
    assert measured["tokens_per_answer"] < rows[("sft", 8)]["tokens_per_answer"]
    assert "## Early rejection (speculative rejection) vs Best-of-N" in report
    assert "early_rejection.png" in results["files"]
