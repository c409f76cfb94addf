"""`bon bench` as users run it, shrunk: the tiny checkpoints, best_of 1 and 2, one repeat, targets (a), (b) and
(c) (a real `bon serve` on a free port), throughput and memory with a few requests. No timing is asserted: the
structure of the JSON is, and that its ratios are the measured times' ratios."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bon.cli import main

MAX_TOKENS = 8
LEAK_REQUESTS = 20


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread while the test runs (and so in the servers it starts): two threads that spin on a busy
    2-core machine make the run many times slower, and no timing is asserted here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_run_of_a_b_and_c(tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  one_thread: None):
    main(["bench", "--json", "--policy", str(tiny_checkpoints / "sft"), "--rm", str(tiny_checkpoints / "rm"),
          "--best-of", "2,1", "--repeats", "1", "--max-tokens", str(MAX_TOKENS), "--skip", "d,e",
          "--throughput-best-of", "2", "--concurrency", "1,2", "--throughput-requests", "2", "--memory-best-of", "2",
          "--memory-concurrency", "2", "--memory-requests", "2", "--leak-requests", str(LEAK_REQUESTS),
          "--leak-max-tokens", "4", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds the JSON object alone

    assert summary["kind"] == "bench" and summary["config"]["best_of"] == [1, 2]
    assert summary["machine"]["cpus"] >= 1 and summary["machine"]["vllm"] is None  # d and e skipped: not looked up
    targets = summary["targets"]
    assert list(targets) == ["a", "b", "c", "d", "e"]
    assert {k: t["status"] for k, t in targets.items()} == {"a": "ok", "b": "ok", "c": "ok", "d": "skipped",
                                                             "e": "skipped"}
    assert targets["d"]["why"] == "--skip"
    for letter in "abc":
        for n in (1, 2):
            p = targets[letter]["points"][str(n)]
            # every candidate ran to max_tokens (ignore_eos, or min_new_tokens for transformers)
            assert p["tokens"] == [n * MAX_TOKENS]
            for key in ("latency_s", "sample_s", "score_s"):
                (value,) = p[key]["values"]
                assert p[key]["p50"] == p[key]["min"] == p[key]["max"] == value and value > 0
            assert p["sample_s"]["p50"] + p["score_s"]["p50"] <= p["latency_s"]["p50"]
    assert "total_s" not in targets["a"]["points"]["1"] and "total_s" in targets["c"]["points"]["1"]
    assert summary["warnings"] == []

    # The ratios are computed from the times above, repeat by repeat.
    def value(letter: str, key: str, n: int = 2) -> float:
        return targets[letter]["points"][str(n)][key]["values"][0]

    ratios = summary["ratios"]
    assert ratios["speedup_c_over_a"]["2"]["p50"] == pytest.approx(value("a", "latency_s") / value("c", "latency_s"))
    assert ratios["overhead_c_minus_b_over_c"]["1"]["p50"] == pytest.approx(
        (value("c", "latency_s", 1) - value("b", "latency_s", 1)) / value("c", "latency_s", 1))
    assert ratios["score_share_c"]["2"]["p50"] == pytest.approx(value("c", "score_s") / value("c", "total_s"))
    assert ratios["d_over_e_without_rm"] == {} and ratios["score_share_d"] == {}

    throughput = summary["throughput"]
    assert list(throughput) == ["c"]
    rates = throughput["c"]["concurrency"]
    assert [(rates[c]["requests"], rates[c]["errors"]) for c in ("1", "2")] == [(2, 0), (2, 0)]
    assert throughput["c"]["ratio"] == pytest.approx(rates["2"]["requests_per_s"] / rates["1"]["requests_per_s"])

    peak, growth = summary["memory"]["peak"], summary["memory"]["growth"]
    assert peak["errors"] == 0 and peak["vm_hwm_mib"] >= peak["rss_before_mib"] > 0
    assert [r["requests"] for r in growth["readings"]] == list(range(0, LEAK_REQUESTS + 1, LEAK_REQUESTS // 10))
    assert growth["errors"] == 0
    assert growth["growth_mib"] == pytest.approx(growth["readings"][-1]["rss_mib"] - growth["readings"][0]["rss_mib"])

    # best_of 16 was not in the run: its goals say so; throughput and memory are judged
    goals = {g["goal"].split(" ")[0]: g for g in summary["goals"]}
    assert len(summary["goals"]) == 6
    assert [g["met"] for g in summary["goals"][:4]] == [None] * 4
    assert all("not measured" in g["measured"] for g in summary["goals"][:4])
    assert goals["throughput"]["p50"] == throughput["c"]["ratio"] and isinstance(goals["throughput"]["met"], bool)
    assert isinstance(goals["no"]["met"], bool)

    files = summary["files"]
    assert json.loads(Path(files["json"]).read_text()) == summary
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(f).name for f in files.values())
    # the plain-text report goes to stderr beside the JSON
    assert "goals (the latency ones at best_of 16)" in captured.err
    assert "(c) bon serve, hf backend, HTTP" in captured.err


def test_unknown_names_to_skip_are_refused():
    with pytest.raises(SystemExit, match="unknown f"):
        main(["bench", "--skip", "c,f"])
