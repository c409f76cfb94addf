"""What `bon serve` tells its operator: the banner when ready, an access-log line per request, `bon --version`."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx

from common.servers import BON_SERVE
from tests.builders import launch_server, wait_until

ASK = {"model": "sft", "messages": [{"role": "user", "content": "What can I do with my teddy bear today?"}],
       "best_of": 3, "max_tokens": 8}


def test_banner_and_one_access_line_per_request(tiny_checkpoints: Path, log_dir: Path) -> None:
    with launch_server(tiny_checkpoints, log_dir, "--log-level", "info", "--guard", "judge",
                       command=BON_SERVE) as server:
        server.wait()
        wait_until(lambda: "bon is ready on" in server.logs(), what="the ready banner")
        logs = server.logs()
        assert f"bon is ready on {server.url}" in logs
        ready = httpx.get(server.url + "/ready").json()
        assert f"policy sft: {ready['policies']['sft']} (hf backend, default best_of" in logs
        assert f"reward model: {ready['reward_model']}" in logs
        assert "guard: gold-judge" in logs and "no API key" in logs and "access log on" in logs

        ok = httpx.post(server.url + "/v1/chat/completions", json=ASK, headers={"X-Request-Id": "req-42.a"},
                        timeout=60)
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-42.a"
        missing = httpx.post(server.url + "/v1/chat/completions", json={**ASK, "model": "nope"}, timeout=60)
        assert missing.status_code == 404
        generated = missing.headers["x-request-id"]  # no id sent: the server makes one
        assert re.fullmatch(r"[0-9a-f]{16}", generated)
        forged = httpx.get(server.url + "/health", headers={"X-Request-Id": "bad id\twith spaces"})
        assert forged.headers["x-request-id"] != "bad id\twith spaces"

        wait_until(lambda: generated in server.logs(), what="the access line of the 404")
        lines = server.logs().splitlines()
        (line,) = [x for x in lines if "req-42.a" in x]
        assert re.search(r"req-42\.a POST /v1/chat/completions 200 policy=sft best_of=3 [0-9.]+ms$", line)
        (line,) = [x for x in lines if generated in x]
        assert re.search(rf"{generated} POST /v1/chat/completions 404 policy=nope best_of=- [0-9.]+ms$", line)


def test_access_log_can_be_turned_off(tiny_checkpoints: Path, log_dir: Path) -> None:
    with launch_server(tiny_checkpoints, log_dir, "--log-level", "info", "--no-access-log") as server:
        server.wait()
        response = httpx.post(server.url + "/v1/chat/completions", json=ASK, headers={"X-Request-Id": "quiet-1"},
                              timeout=60)
        assert response.status_code == 200 and response.headers["x-request-id"] == "quiet-1"
        wait_until(lambda: "bon is ready on" in server.logs(), what="the ready banner")
        assert "access log off" in server.logs()
        assert "quiet-1" not in server.logs()


def test_bon_version() -> None:
    out = subprocess.run([sys.executable, "-m", "bon.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"bon {version('bon')}"
