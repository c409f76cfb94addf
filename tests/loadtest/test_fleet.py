"""`python -m loadtest.fleet` on the tiny checkpoints: two vLLM policy replicas, a vLLM reward-model server and two
bon front ends (plus a baseline front end on one replica) as processes on this machine, load-tested while one
replica is killed with SIGKILL and restarted. Real engines (vLLM's CPU build); no timing is asserted, only that
every request was answered, where the work went, and that the failover happened as planned.

The session's vLLM servers (`vllm_peers`) are the first replica and the RM; the fleet starts the second replica,
the one it kills, and the front ends. A few minutes of work all the same: the replica starts twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.servers import Server
from tests.builders import REPO

pytestmark = pytest.mark.vllm

BEST_OF = 4
AFTER_RESTART = 8
RUN_TIMEOUT_S = 900
"""The fleet's own deadlines (each server's start, the restart) come first; this one only bounds a hung run."""


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_fleet_answers_every_request_while_a_policy_replica_is_killed_and_restarted(
        tmp_path: Path, tiny_checkpoints: Path, vllm_peers: dict[str, Server]):
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.fleet", "--policy", str(tiny_checkpoints / "sft"), "--reward",
         str(tiny_checkpoints / "rm"), "--replica-url", vllm_peers["policy"].url, "--replicas", "1",
         "--reward-url", vllm_peers["rm"].url, "--concurrency", "4", "--best-of", str(BEST_OF), "--max-tokens", "16",
         "--phase", "6", "--kill-after", "2", "--after-restart", str(AFTER_RESTART), "--start-timeout", "300",
         "--out", str(out)],
        cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    print(done.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet-logs", "fleet.json"]  # no temporary file left
    report = json.loads(out.read_text())
    phases = report["phases"]

    assert report["ok"] and report["failed_requests"] == 0
    for name, phase in phases.items():
        figures = phase["figures"]
        assert figures["sent"] == figures["answered"] > 0 and figures["errors"] == 0, (name, phase["failed"])
        assert all(answered > 0 for answered in phase["answered_by_front_end"].values()), (name, phase)
        assert figures["answers_with_extension"] == figures["answered"]  # bon's answers, reranked from BEST_OF
        assert 0 < figures["latency_s_p50"] <= figures["latency_s_p99"]

    # Each answer is one n=BEST_OF request to one replica: the baseline's all go to the first replica, the fleet's
    # to both.
    single, fleet = phases["single"], phases["fleet"]
    assert single["front_ends"] == ["baseline"] and fleet["front_ends"] == ["front-end-0", "front-end-1"]
    assert single["sequences_by_replica"] == {"replica-0": BEST_OF * single["figures"]["answered"], "replica-1": 0}
    assert sum(fleet["sequences_by_replica"].values()) == BEST_OF * fleet["figures"]["answered"]
    assert min(fleet["sequences_by_replica"].values()) > 0, fleet["sequences_by_replica"]
    assert all(ratio > 0 for ratio in report["fleet_over_single"].values()), report["fleet_over_single"]

    # The replica died with requests running, was away while requests came, and served again once back; the front
    # ends retried what failed at it on the other replica, so no client saw a failure.
    events = phases["failover"]["events"]
    assert "error" not in events, events
    assert events["replica"] == "replica-1" and events["running_at_kill"] > 0
    assert events["killed_at_s"] < events["back_at_s"] <= events["served_by_s"]
    assert events["sent_while_away"] > 0 and events["failed_while_away"] == 0
    assert events["retried_attempts"] > 0
    assert events["served_after_restart"] >= AFTER_RESTART
