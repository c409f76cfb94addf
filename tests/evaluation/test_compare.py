"""`bon eval compare`: the order-statistics estimators against brute force, the KL bound, frontier and
break-even by hand, and the whole command end to end on tiny checkpoints, through a real server."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

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
    kl_bound,
    load_reward_model,
    method_row,
    overoptimisation,
    pareto_frontier,
)
from evaluation.compare_config import CompareConfig
from models.checkpoint import write_checkpoint
from training.evaluate import load_policy

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


def _row(policy: str, n: int, gold: float, cost: float | None) -> dict:
    return {"label": f"{policy}-{n}", "policy": policy, "best_of": n, "gold_reward_mean": gold,
            "device_seconds_per_answer": cost}


def test_pareto_frontier_and_break_even_by_hand():
    bon = [_row("sft", 1, 0.0, 1.0), _row("sft", 4, 0.4, 4.0), _row("sft", 16, 0.6, 16.0)]
    tuned = _row("dpo", 1, 0.5, 1.0)
    points = [*bon, tuned, _row("ppo", 1, 0.3, 2.0), _row("ppo", 2, -1.0, 0.5)]
    assert pareto_frontier(points, "device_seconds_per_answer") == ["ppo-2", "dpo-1", "sft-16"]
    b = break_even(tuned, bon, train_seconds=100.0)
    assert b["equal_gold_best_of"] == pytest.approx(8.0)  # halfway from 0.4 to 0.6 on log N: N = 8
    assert b["bon_cost_per_answer"] == pytest.approx(8.0)  # cost linear in N between 4 and 16
    assert b["answers"] == pytest.approx(100.0 / 7.0)
    never = break_even(_row("ppo", 1, 0.9, 1.0), bon, train_seconds=100.0)
    assert never["answers"] == 0 and "BoN never reaches it within N ≤ 16" in never["text"]
    worse = break_even(_row("ppo", 1, -0.1, 1.0), bon, train_seconds=100.0)
    assert worse["answers"] is None and "SFT policy alone (N=1) already matches" in worse["text"]
    dear = break_even(_row("ppo", 1, 0.5, 9.0), bon, train_seconds=100.0)
    assert dear["answers"] is None and dear["text"].startswith("Never repaid")
    assert break_even(tuned, bon, train_seconds=None)["answers"] is None


def test_overoptimisation_verdicts():
    pool = Pool("sft", [["a", "b"]], np.ones((1, 2)), np.array([[0.0, 2.0]]), np.array([[0.0, 2.0]]))

    def rows(golds: list[float]) -> list[dict]:
        return [{"best_of": 2**i, "gold_reward_mean": g, "gold_reward_ci95": 0.01, "rm_reward_mean": float(i)}
                for i, g in enumerate(golds)]

    assert "falls after N=2" in overoptimisation(rows([0.0, 0.5, 0.2]), pool)["verdict"]
    assert "flattens" in overoptimisation(rows([0.0, 0.5, 0.51]), pool)["verdict"]
    assert "keeps rising" in overoptimisation(rows([0.0, 0.5, 1.0]), pool)["verdict"]


def test_bon_1_is_the_plain_mean_and_a_policy_has_no_kl_to_itself(tiny_sft: Path, tiny_rm: Path):
    model, tokenizer = load_policy(tiny_sft)
    prompts = [p.text for p in world.prompts("test", 3, 0)]
    cfg = CompareConfig(prompts=3, sft_samples=5, tuned_samples=5, best_of=(1, 4), tuned_best_of=(1, 4),
                        max_new_tokens=24)
    reward = load_reward_model(tiny_rm)
    sft = build_pool("sft", model, tokenizer, prompts, 5, cfg, 0, reward)
    assert sft.gold[0, 0] == world.score(prompts[0], sft.texts[0][0])
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
                        server=False)
    (tmp_path / "gold_vs_latency.png").write_bytes(b"from an earlier run with the server")
    results = compare(cfg)
    assert results["server"] == {"measured": False, "reason": "skipped (--no-server)"}
    assert results["pareto"]["cost"] == "tokens_per_answer"
    assert "gold_vs_latency.png" not in results["files"] and not (tmp_path / "gold_vs_latency.png").exists()
    assert sorted(results["files"]) == sorted(p.name for p in tmp_path.iterdir())
    assert all(r.get("latency_p50_s") is None for r in results["methods"])
    assert all(b["answers"] in (0, None) for b in results["break_even"].values())
    assert "not measured (skipped (--no-server))" in (tmp_path / "report.md").read_text()


def test_bon_eval_compare_end_to_end(tiny_sft: Path, tiny_rm: Path, tuned: tuple[Path, Path], tmp_path: Path):
    """The command as users run it, on 6 prompts, through a real server with 2 requests per point."""
    dpo, ppo = tuned
    out = tmp_path / "report"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "bon.cli", "eval", "compare", "--sft", str(tiny_sft), "--rm", str(tiny_rm),
         "--dpo", str(dpo), "--ppo", str(ppo), "--out", str(out), "--prompts", "6", "--sft-samples", "9",
         "--tuned-samples", "4", "--best-of", "1,2,4,8", "--tuned-best-of", "1,2", "--max-new-tokens", "24",
         "--requests", "2", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
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
    assert rows[("dpo", 1)]["kl_bound"] == pytest.approx(rows[("dpo", 1)]["kl_estimate"])
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
