"""`bon loadtest` against the real Best-of-N server (`python -m server`, as `bon serve` starts it) on the tiny
checkpoints the server tests serve: our `bon` extension is read, and admission-control refusals and a wrong API
key are counted by status, never a crash."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.servers import Server
from loadtest import add_arguments, run_cli
from tests.builders import API_KEY, launch_server


@pytest.fixture(scope="module")
def bon_server(tiny_checkpoints: Path, log_dir: Path) -> Iterator[Server]:
    # one slot and one queue place: a third concurrent request is refused with 429 at once
    server = launch_server(tiny_checkpoints, log_dir, "--api-key", API_KEY, "--max-in-flight", "1",
                           "--max-queue", "1", "--default-max-tokens", "8", "--max-best-of", "8")
    try:
        yield server.wait()
    finally:
        server.stop()


def _run(*flags: str) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run_cli(parser.parse_args(["--no-progress", "--max-tokens", "8", *flags]))


def test_sweep_reads_the_bon_extension(bon_server, tmp_path):
    summary = _run("--url", bon_server.url, "--api-key", API_KEY, "--best-of", "1,4", "--concurrency", "1",
                   "--requests", "4", "--out", str(tmp_path))
    assert summary["config"]["model"] == "sft"  # the first id of GET /v1/models
    one, four = summary["points"]
    for p in (one, four):
        assert (p["sent"], p["answered"], p["errors"]) == (4, 4, 0), p["errors_by_status"]
        assert p["device_seconds_source"] == "timings"  # bon.timings sample + score seconds
        assert 0 < p["device_seconds_per_answer"] <= p["latency_s_max"]
        assert p["reward_mean"] is not None
    with (tmp_path / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    # Per request, not per percentile: an empty answer has no first token, so the two p50s cover other requests.
    assert all(float(r["ttft_s"]) <= float(r["latency_s"]) for r in rows if r["ttft_s"])
    assert one["generated_per_returned_token"] == 1.0
    assert four["generated_tokens_per_answer"] > one["generated_tokens_per_answer"]  # 4 candidates per answer


def test_admission_refusals_are_counted_by_status(bon_server, tmp_path):
    summary = _run("--url", bon_server.url, "--api-key", API_KEY, "--best-of", "4", "--concurrency", "4",
                   "--requests", "12", "--no-stream", "--out", str(tmp_path))
    (p,) = summary["points"]
    assert p["sent"] == 12 == p["answered"] + p["errors"]
    assert set(p["errors_by_status"]) == {"429"}
    assert p["answered"] >= 1

    summary = _run("--url", bon_server.url, "--api-key", "wrong", "--model", "sft", "--best-of", "1",
                   "--concurrency", "1", "--requests", "2", "--out", str(tmp_path / "unauthorized"))
    assert summary["points"][0]["errors_by_status"] == {"401": 2}
