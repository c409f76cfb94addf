"""An HTTP server started as a child process, and waited for until it answers (the comparison's `bon serve`, the
servers the tests start as users do)."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The probe goes to a server on this machine: never through a proxy named in the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOG_TAIL = 10_000
"""Characters of the server's output quoted when it fails to start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (chosen by the OS; another process could still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` answers 200 now; False on any other status and when nothing answers."""
    try:
        with _LOCAL.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, an error status, a garbled answer
        return False


BON_SERVE = (sys.executable, "-m", "bon.cli", "serve")
"""`bon serve` as this Python starts it."""
VLLM_SERVE = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
"""`vllm serve` as this Python starts it (the CPU build's `vllm` console script cannot find its own version)."""

@dataclass
class Server:
    """A server process from `start_server`: where it listens, and the file its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, probe: str = "/ready", timeout_s: float = 120.0) -> Server:
        """Return once GET `probe` answers 200; raise with the server's output if it exits first or never does."""
        deadline = time.monotonic() + timeout_s
        while not _answers_ok(self.url + probe):
            if self.process.poll() is not None:
                raise RuntimeError(f"the server at {self.url} exited with status {self.process.returncode}:\n"
                                   f"{self.logs()[-LOG_TAIL:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not answer {probe} with 200 within "
                                   f"{timeout_s:g} s:\n{self.logs()[-LOG_TAIL:]}")
            time.sleep(0.1)
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """Ask it to shut down (SIGTERM); kill it if it has not exited within `grace_s` seconds."""
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(command: Sequence[str], url: str, log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> Server:
    """Start `command`, a server that will listen at `url`, its stdout and stderr going to `log`.

    It returns at once, so that several servers start side by side; `wait` before calling one.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(url, process, Path(log))
