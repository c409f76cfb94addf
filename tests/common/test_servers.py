"""common/servers.py: a real server process started, waited for until it answers, and stopped."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from common.servers import Server, free_port, start_server


def _http_server(directory: Path, log: Path) -> Server:
    """The standard library's file server on a free port: a real HTTP server that starts in a moment."""
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)]
    return start_server(command, f"http://127.0.0.1:{port}", log)


def test_free_port_can_be_listened_on():
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()


def test_wait_returns_once_the_server_answers_and_stop_ends_it(tmp_path: Path):
    (tmp_path / "ready").write_text("yes")
    with _http_server(tmp_path, tmp_path / "server.log") as server:
        assert server.wait("/ready", timeout_s=30) is server
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        assert opener.open(server.url + "/ready", timeout=5).read() == b"yes"
    assert server.process.poll() is not None  # leaving the block stopped it
    assert "GET /ready" in server.logs()  # the server's own output went to its log


def test_wait_fails_with_the_output_of_a_server_that_exits(tmp_path: Path):
    command = [sys.executable, "-c", "print('no checkpoints here', flush=True); raise SystemExit(4)"]
    with start_server(command, f"http://127.0.0.1:{free_port()}", tmp_path / "server.log") as server:
        with pytest.raises(RuntimeError, match=r"exited with status 4:\nno checkpoints here"):
            server.wait(timeout_s=30)


def test_wait_fails_when_the_probe_never_answers_200(tmp_path: Path):
    with _http_server(tmp_path, tmp_path / "server.log") as server:
        server.wait("/", timeout_s=30)
        with pytest.raises(RuntimeError, match="did not answer /missing with 200 within 1 s"):
            server.wait("/missing", timeout_s=1)  # the file server answers 404
