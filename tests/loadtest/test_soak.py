"""`python -m loadtest.soak`, the short form: 20 seconds of the mixed load (chat and completions, streamed or not,
bad requests, abandoned ones) against a real server while the admin API swaps its policy and reward model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.servers import Server
from loadtest.soak import KINDS
from models.checkpoint import read_manifest
from tests.builders import REPO, launch_server

KEY = "soak-admin-key"


@pytest.fixture(scope="module")
def soak_server(swap_root: Path, log_dir: Path) -> Iterator[Server]:
    server = launch_server(swap_root, log_dir, "--admin-key", KEY, "--policy", "sft", "--policy",
                           f"live={swap_root / 'dpo'}", "--default-max-tokens", "8", "--max-best-of", "8",
                           "--max-in-flight", "8")
    try:
        yield server.wait()
    finally:
        server.stop()


def test_a_short_soak_with_swaps_gets_no_server_error_and_reads_the_server_process(soak_server, swap_root,
                                                                                    tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.soak", "--url", soak_server.url, "--pid", str(soak_server.process.pid),
         "--minutes", str(20 / 60), "--concurrency", "3", "--best-of", "1,2,4", "--max-tokens", "8",
         "--bad-share", "0.2", "--disconnect-share", "0.2", "--admin-key", KEY, "--swap-every", "3",
         "--swap-policy", "live=ppo,dpo", "--swap-reward", "rm-v2,rm", "--sample-every", "5", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)  # the soak's summary, for -s
    assert [p.name for p in tmp_path.iterdir()] == ["soak.json"]  # written atomically: no temporary file left
    report = json.loads(out.read_text())

    errors = report["errors"]
    assert errors["server_5xx"] == 0 and errors["total"] == 0, errors
    requests = report["requests"]
    assert set(requests["by_kind"]) == set(KINDS)
    assert all(requests["by_kind"][kind]["sent"] > 0 for kind in KINDS), requests["by_kind"]
    assert sum(k["sent"] for k in requests["by_kind"].values()) == requests["sent"]
    bad = requests["by_kind"]["bad"]["statuses"]
    assert bad and all(400 <= int(status) < 500 for status in bad), bad
    latency = report["latency_s"]["all"]
    assert latency["n"] == requests["answered"] > 0 and latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["ttft_s"]["chat-stream"]["n"] > 0 and report["ttft_s"]["completion-stream"]["n"] > 0

    swaps = report["swaps"]
    assert swaps["done"] >= 5 and swaps["ok"] == swaps["done"], swaps["records"]
    calls = [(s["call"], s["checkpoint"], s["version"]) for s in swaps["records"][:5]]
    assert calls == [("POST /admin/policies/live", "ppo", read_manifest(swap_root / "ppo").version),
                     ("POST /admin/policies/live", "dpo", read_manifest(swap_root / "dpo").version),
                     ("POST /admin/policies/live/rollback", None, read_manifest(swap_root / "ppo").version),
                     ("POST /admin/reward", "rm-v2", read_manifest(swap_root / "rm-v2").version),
                     ("POST /admin/reward", "rm", read_manifest(swap_root / "rm").version)]

    server = report["server"]
    assert server["read"] and server["pid"] == soak_server.process.pid and server["error"] is None
    assert len(server["samples"]) >= 4  # start, every 5 s, end
    for end in ("start", "end"):
        assert server[end]["rss_bytes"] > 10 * 2**20 and server[end]["fds"] > 3 and server[end]["threads"] >= 1
    assert server["drift"]["fds"] == server["end"]["fds"] - server["start"]["fds"]
    assert "errors" in done.stdout and "server RSS" in done.stdout
