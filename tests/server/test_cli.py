import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import add_arguments, main, serve
from server.settings import ConfigError

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
