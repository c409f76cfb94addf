"""vLLM itself as the peer: a plain vLLM OpenAI server of the tiny SFT policy and `bon serve --policy-backend vllm`
of the same checkpoint, both driven by `bon loadtest` as users run it (`--mode vllm-n` against vLLM, the default
mode against bon), then put side by side with `bon loadtest --compare`. Real processes, real engines (vLLM's CPU
build here); no timing is asserted, only what was sent, answered and counted."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from bon.cli import main
from common.servers import Server

pytestmark = pytest.mark.vllm

MAX_TOKENS = 12
REQUESTS = 3


@pytest.fixture(scope="module")
def servers(vllm_peers: dict[str, Server], vllm_server: Server) -> dict[str, Server]:
    """vLLM's own server of the checkpoint that `vllm_server` (bon, vllm backend) serves."""
    return {"vllm": vllm_peers["policy"], "bon": vllm_server}


def loadtest(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    """`bon loadtest ... --json` through the command line's parser; the summary it prints."""
    main(["loadtest", "--no-progress", "--json", "--concurrency", "1", "--requests", str(REQUESTS), *flags])
    return json.loads(capsys.readouterr().out)


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "requests.csv").open() as f:
        return list(csv.DictReader(f))


def by_n(summary: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["best_of"]: p for p in summary["points"]}


def test_bon_and_vllm_n_side_by_side(servers, tmp_path, capsys):
    common = ("--best-of", "1,4", "--max-tokens", str(MAX_TOKENS), "--ignore-eos")
    vllm = loadtest(capsys, "--url", servers["vllm"].url, "--mode", "vllm-n", "--out", str(tmp_path / "vllm"),
                    *common)
    bon = loadtest(capsys, "--url", servers["bon"].url, "--out", str(tmp_path / "bon"), *common)

    for summary, name in ((vllm, "vllm"), (bon, "bon")):
        assert summary["config"]["model"] == "sft" and summary["config"]["ignore_eos"] is True
        assert summary["warnings"] == []
        assert sorted(by_n(summary)) == [1, 4]
        for n, p in by_n(summary).items():
            assert (p["sent"], p["answered"], p["errors"]) == (REQUESTS, REQUESTS, 0), p["errors_by_status"]
            assert 0 < p["latency_s_p50"] <= p["latency_s_p90"] <= p["latency_s_p95"] <= p["latency_s_p99"]
            assert p["ttft_s_p50"] <= p["latency_s_p99"]
            # ignore_eos: every candidate runs to max_tokens, so both servers generate exactly N × max_tokens
            assert p["generated_tokens_per_answer"] == n * MAX_TOKENS
        on_disk = json.loads((tmp_path / name / "summary.json").read_text())
        assert [p["latency_s_p50"] for p in on_disk["points"]] == [p["latency_s_p50"] for p in summary["points"]]
        assert len(rows(tmp_path / name)) == 2 * REQUESTS
        assert by_n(summary)[4]["generated_tokens_per_answer"] > by_n(summary)[1]["generated_tokens_per_answer"]

    # vLLM answers n=N with all N choices, each cut by length; usage counts the tokens of all of them
    for n, p in by_n(vllm).items():
        assert p["choices_per_answer"] == n and p["finish_reasons"] == {"length": n * REQUESTS}
        assert p["returned_tokens_per_answer"] == n * MAX_TOKENS and p["answers_with_extension"] == 0
        assert p["device_seconds_source"] == "latency"  # vLLM reports no timings
    for row in rows(tmp_path / "vllm"):
        n = int(row["best_of"])
        assert (row["status"], int(row["choices"]), int(row["generated_tokens"])) == ("200", n, n * MAX_TOKENS)
        assert row["finish_reasons"] == ";".join(["length"] * n)
    # bon samples N and returns the best one: N × max_tokens generated, max_tokens returned
    for _, p in by_n(bon).items():
        assert p["choices_per_answer"] == 1 and p["finish_reasons"] == {"length": REQUESTS}
        assert p["returned_tokens_per_answer"] == MAX_TOKENS and p["answers_with_extension"] == REQUESTS
        assert p["device_seconds_source"] == "timings"

    compare = loadtest(capsys, "--compare", f"bon={tmp_path / 'bon'}", f"vllm={tmp_path / 'vllm'}",
                       "--out", str(tmp_path / "compare"))
    assert [r["name"] for r in compare["runs"]] == ["bon", "vllm"]
    assert [r["mode"] for r in compare["runs"]] == ["bon", "vllm-n"]
    assert compare["warnings"] == [] and compare["settings"]["max_tokens"] == MAX_TOKENS
    assert [r["best_of"] for r in compare["points"]] == [1, 4]
    for row in compare["points"]:
        ours, theirs = row["runs"]
        assert ours["latency_s_p50"] == by_n(bon)[row["best_of"]]["latency_s_p50"]
        assert theirs["latency_s_p50"] == by_n(vllm)[row["best_of"]]["latency_s_p50"]
        assert row["latency_p50_ratio"] == pytest.approx(ours["latency_s_p50"] / theirs["latency_s_p50"])
        assert ours["generated_tokens_per_answer"] == theirs["generated_tokens_per_answer"]
    assert sorted(compare["files"]) == sorted(p.name for p in (tmp_path / "compare").iterdir())


def test_without_streaming_and_with_the_wrong_mode(servers, tmp_path, capsys):
    # no ignore_eos: the choices stop where the policy ends them, and usage still counts all of them
    vllm = loadtest(capsys, "--url", servers["vllm"].url, "--mode", "vllm-n", "--best-of", "3", "--no-stream",
                    "--max-tokens", str(MAX_TOKENS), "--out", str(tmp_path / "vllm"))
    (p,) = vllm["points"]
    assert (p["answered"], p["choices_per_answer"], vllm["warnings"]) == (REQUESTS, 3, [])
    assert sum(p["finish_reasons"].values()) == 3 * REQUESTS and set(p["finish_reasons"]) <= {"length", "stop"}
    for row in rows(tmp_path / "vllm"):
        assert 3 <= int(row["generated_tokens"]) <= 3 * MAX_TOKENS and row["ttft_s"] == ""

    # plain vLLM takes best_of without a word and samples one answer: the load test says so
    wrong = loadtest(capsys, "--url", servers["vllm"].url, "--best-of", "4", "--max-tokens", str(MAX_TOKENS),
                     "--ignore-eos", "--out", str(tmp_path / "wrong"))
    (p,) = wrong["points"]
    assert (p["answered"], p["answers_with_extension"], p["generated_tokens_per_answer"]) == (REQUESTS, 0, MAX_TOKENS)
    assert len(wrong["warnings"]) == 1 and "--mode vllm-n" in wrong["warnings"][0]
