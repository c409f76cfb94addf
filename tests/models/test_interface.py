"""The backends' shared checks (models/interface.py): a checkpoint is verified before any backend loads it."""

import shutil

import pytest

from models.checkpoint import CheckpointError
from models.interface import checkpoint_version


def test_checkpoints_are_verified_before_loading(tiny_checkpoints, tmp_path):
    assert checkpoint_version(tiny_checkpoints / "rm", "reward", False).startswith("rm-")
    with pytest.raises(CheckpointError, match="expected a reward"):
        checkpoint_version(tiny_checkpoints / "sft", "reward", False)
    plain = shutil.copytree(tiny_checkpoints / "rm", tmp_path / "plain-hf")
    (plain / "manifest.json").unlink()
    with pytest.raises(CheckpointError):
        checkpoint_version(plain, "reward", False)
    assert checkpoint_version(plain, "reward", True) == "unverified-plain-hf"
    (plain / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint_version(plain, "reward", True)
