import os
import subprocess
import sys
from pathlib import Path

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
