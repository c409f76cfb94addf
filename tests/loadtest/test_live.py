"""`bon loadtest` against a real HTTP server process (tests/loadtest/fake_server.py) with known delays and
deterministic 429/500 answers: counts add up, errors are counted by status, and the measured times are not
shorter than the server's delays."""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bon.cli import main
from common.servers import free_port
from loadtest import add_arguments, run_cli
from tests.builders import script_server
from tests.loadtest import fake_server as fake


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with script_server(fake.__file__, "/v1/models", tmp_path_factory.mktemp("fake-server") / "server.log") as server:
        yield server.url


@pytest.fixture
def server(server_url: str) -> str:
    httpx.post(f"{server_url}/reset").raise_for_status()  # request numbering, hence the errors, from 1 again
    return server_url


def _run(*flags: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run_cli(parser.parse_args(["--no-progress", *flags]))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "requests.csv").open() as f:
        return list(csv.DictReader(f))


def test_closed_loop_streaming_sweep_through_bon_cli(server, tmp_path, capsys):
    main(["loadtest", "--url", server, "--best-of", "1,4", "--concurrency", "1,3", "--requests", "10",
          "--out", str(tmp_path), "--slo", "10", "--json", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["model"] == "fake"  # from GET /v1/models
    points = summary["points"]
    assert [(p["best_of"], p["concurrency"]) for p in points] == [(1, 1), (1, 3), (4, 1), (4, 3)]
    for p in points:
        assert p["sent"] == 10
        assert p["sent"] == p["answered"] + p["errors"]
        assert p["generated_per_returned_token"] == p["best_of"]  # bon.candidate_tokens / usage.completion_tokens
        assert p["device_seconds_per_answer"] == pytest.approx(0.025)  # bon.timings sample + score
        assert p["device_seconds_source"] == "timings"
        assert p["goodput_rps"] == p["throughput_rps"]
    # requests 3, 13, 23, 33 answer 429 and 7, 17, 27, 37 answer 500, whichever point sent them
    total = Counter()
    for p in points:
        total.update(p["errors_by_status"])
    assert total == {"429": 4, "500": 4}

    rows = _rows(tmp_path)
    assert len(rows) == 40
    for row in rows:
        if row["status"] != "200":
            continue
        latency, ttft = float(row["latency_s"]), float(row["ttft_s"])
        assert fake.TTFT <= ttft <= latency
        assert latency >= fake.TTFT + (fake.TOKENS - 1) * fake.ITL
        assert float(row["reward"]) == 0.25 and row["policy_version"] == "fake-policy"
    assert sorted(summary["files"]) == sorted(p.name for p in tmp_path.iterdir())


def test_open_loop_without_streaming(server, tmp_path):
    summary = _run("--url", server + "/v1", "--model", "fake", "--best-of", "2", "--rate", "40", "--requests", "12",
                   "--no-stream", "--slo", "0.0001", "--out", str(tmp_path))
    (p,) = summary["points"]
    assert (p["loop"], p["rate"], p["sent"], p["answered"], p["errors"]) == ("open", 40.0, 12, 10, 2)
    assert p["errors_by_status"] == {"429": 1, "500": 1}
    assert p["latency_s_p50"] >= fake.DELAY
    assert p["ttft_s_p50"] is None
    assert p["goodput_rps"] == 0.0  # nothing answers within 0.1 ms
    assert p["generated_tokens_per_answer"] == 2 * fake.TOKENS


def test_vllm_n_mode_sends_n_and_falls_back_to_usage_and_latency(server, tmp_path):
    summary = _run("--url", server, "--model", "fake", "--mode", "vllm-n", "--best-of", "3", "--concurrency", "2",
                   "--requests", "6", "--out", str(tmp_path))
    (p,) = summary["points"]
    assert p["sent"] == 6 and p["errors_by_status"] == {"429": 1}
    assert p["generated_tokens_per_answer"] == 3 * fake.TOKENS  # all n choices returned
    assert p["generated_per_returned_token"] == 1.0
    assert p["choices_per_answer"] == 3 and p["finish_reasons"] == {"length": 3 * p["answered"]}
    assert p["answers_with_extension"] == 0 and summary["warnings"] == []
    assert p["device_seconds_source"] == "latency"
    assert p["device_seconds_per_answer"] == pytest.approx(p["latency_s_mean"])
    assert p["itl_s_p50"] >= fake.ITL / 2  # gaps within a choice, not between the interleaved choices' chunks


def test_timeouts_and_refused_connections_are_recorded_not_raised(server, tmp_path):
    prompts = tmp_path / "slow.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "be slow"}]}) + "\n")
    started = time.perf_counter()
    summary = _run("--url", server, "--model", "fake", "--best-of", "1", "--concurrency", "2", "--requests", "2",
                   "--timeout", "0.3", "--prompts-file", str(prompts), "--out", str(tmp_path / "slow"))
    assert time.perf_counter() - started < fake.SLOW
    assert summary["points"][0]["errors_by_status"] == {"timeout": 2}

    summary = _run("--url", f"http://127.0.0.1:{free_port()}", "--model", "fake", "--best-of", "1",
                   "--concurrency", "1", "--requests", "3", "--out", str(tmp_path / "refused"))
    (p,) = summary["points"]
    assert (p["sent"], p["answered"], p["errors_by_status"], p["error_rate"]) == (3, 0, {"connect": 3}, 1.0)


def test_duration_bounds_a_point_before_its_request_count(server, tmp_path):
    summary = _run("--url", server, "--model", "fake", "--best-of", "1", "--concurrency", "2", "--requests", "10000",
                   "--duration", "0.4", "--no-stream", "--out", str(tmp_path))
    (p,) = summary["points"]
    assert 2 <= p["sent"] < 100
    assert p["sent"] == p["answered"] + p["errors"] == len(_rows(tmp_path))
    assert p["wall_s"] < 0.4 + 1.0


def test_compare_puts_two_runs_side_by_side(server, tmp_path, capsys):
    _run("--url", server, "--model", "fake", "--best-of", "1,2", "--concurrency", "1", "--requests", "4",
         "--ignore-eos", "--out", str(tmp_path / "ours"))
    _run("--url", server, "--model", "fake", "--mode", "vllm-n", "--best-of", "2,4", "--concurrency", "1",
         "--requests", "4", "--out", str(tmp_path / "peer"))
    main(["loadtest", "--compare", str(tmp_path / "ours"), f"vllm={tmp_path / 'peer' / 'summary.json'}",
          "--out", str(tmp_path / "compare")])
    table = capsys.readouterr().out
    summary = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["bon", "vllm"]
    (row,) = summary["points"]  # best_of=2 is the only point both ran
    assert row["best_of"] == 2
    ours, peer = row["runs"]
    assert row["latency_p50_ratio"] == pytest.approx(ours["latency_s_p50"] / peer["latency_s_p50"])
    assert (ours["choices_per_answer"], peer["choices_per_answer"]) == (1, 2)
    assert "ignore_eos differs: bon True, vllm False" in summary["warnings"]
    assert {"only in bon: C=1 N=1", "only in vllm: C=1 N=4"} <= set(summary["warnings"])
    assert sorted(summary["files"]) == sorted(p.name for p in (tmp_path / "compare").iterdir())
    assert "warning: ignore_eos differs" in table and "A/B p50" in table
