import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from server.cli import add_arguments, main, serve
from server.settings import ConfigError
from server.shutdown import GracefulServer

REPO = Path(__file__).resolve().parents[2]


def test_bon_serve_without_checkpoints_says_how_to_build_them(tmp_path):
    env = {**os.environ, "BON_CHECKPOINTS": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-m", "bon.cli", "serve", "--port", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "bon build-default" in done.stderr and str(tmp_path / "empty" / "sft") in done.stderr


def test_bon_serve_refuses_inconsistent_settings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "server", "--policy-backend", "openai"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "base URLs" in done.stderr


def test_serve_raises_a_config_error_that_only_the_entry_points_turn_into_an_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("BON_CHECKPOINTS", str(tmp_path / "empty"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ConfigError, match="checkpoints not found"):
        serve(parser.parse_args([]))
    with pytest.raises(ConfigError, match="(?s)invalid settings: .*base URLs"):
        serve(parser.parse_args(["--policy-backend", "openai"]))
    with pytest.raises(SystemExit, match=r"(?s)^python -m server: invalid settings: .*base URLs"):
        main(["--policy-backend", "openai"])


def _serve_until_uvicorn(tiny_checkpoints, monkeypatch, flags: list[str]) -> uvicorn.Config:
    """`serve` with these flags up to the point where it starts uvicorn's server: uvicorn's config."""
    launched: list[uvicorn.Config] = []

    def run(server: GracefulServer, sockets: object = None) -> None:
        launched.append(server.config)
        server.started = True

    monkeypatch.setattr(GracefulServer, "run", run)
    monkeypatch.setenv("BON_CHECKPOINTS", str(tiny_checkpoints))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    serve(parser.parse_args(flags))
    return launched[0]


def test_uvicorn_bounds_open_connections_and_idle_keep_alive(tiny_checkpoints, monkeypatch):
    launched = _serve_until_uvicorn(tiny_checkpoints, monkeypatch, ["--max-in-flight", "2", "--max-queue", "3"])
    assert (launched.limit_concurrency, launched.timeout_keep_alive) == (2 + 3 + 64, 5)
    launched = _serve_until_uvicorn(tiny_checkpoints, monkeypatch, ["--limit-concurrency", "10",
                                                                    "--timeout-keep-alive-s", "2"])
    assert (launched.limit_concurrency, launched.timeout_keep_alive) == (10, 2)


def test_invalid_settings_are_reported_without_the_keys():
    secrets = {"--admin-key": "admin-s3cret", "--api-key": "sk-s3cret", "--upstream-api-key": "upstream-s3cret"}
    with pytest.raises(SystemExit) as exited:
        main([*(part for flag, secret in secrets.items() for part in (flag, secret)), "--policy-backend", "openai"])
    message = str(exited.value)
    assert "base URLs" in message and not any(secret in message for secret in secrets.values())


def test_a_public_address_without_an_api_key_exits_before_listening(tmp_path):
    env = {**os.environ, "BON_CHECKPOINTS": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-m", "server", "--host", "0.0.0.0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--host 0.0.0.0" in done.stderr and "--api-key" in done.stderr and "--allow-open" in done.stderr


def test_a_public_address_starts_with_an_api_key_or_allow_open(tiny_checkpoints, monkeypatch):
    for flags in (["--api-key", "sk-k"], ["--allow-open"]):
        assert _serve_until_uvicorn(tiny_checkpoints, monkeypatch, ["--host", "0.0.0.0", *flags]).host == "0.0.0.0"
    monkeypatch.setenv("BON_ALLOW_OPEN", "1")
    assert _serve_until_uvicorn(tiny_checkpoints, monkeypatch, ["--host", "0.0.0.0"]).host == "0.0.0.0"
