"""The backends' shared checks (models/interface.py): a checkpoint is verified, and the backends load the bytes
that were verified, from a private copy."""

import shutil
import tempfile

import pytest
import torch
from safetensors.torch import load_file

import models.interface
from models.checkpoint import CheckpointError, read_manifest
from models.interface import PolicySpec, RewardSpec, verified_copy
from models.policy_hf import HFPolicy
from models.reward_hf import HFReward
from tests.builders import WEIGHTS, derive, perturb


def version(path, kind, allow_unverified=False):
    with verified_copy(path, kind, allow_unverified) as (_, checked):
        return checked


def test_checkpoints_are_verified_before_loading(tiny_checkpoints, tmp_path):
    assert version(tiny_checkpoints / "rm", "reward").startswith("rm-")
    with pytest.raises(CheckpointError, match="expected a reward"):
        version(tiny_checkpoints / "sft", "reward")
    plain = shutil.copytree(tiny_checkpoints / "rm", tmp_path / "plain-hf")
    (plain / "manifest.json").unlink()
    with pytest.raises(CheckpointError):
        version(plain, "reward")
    with verified_copy(plain, "reward", True) as (source, unverified):
        assert (source, unverified) == (plain, "unverified-plain-hf")  # nothing to keep true: loaded in place
    (plain / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        version(plain, "reward", True)


def test_a_verified_checkpoint_is_loaded_from_a_private_copy_removed_afterwards(tiny_checkpoints):
    with verified_copy(tiny_checkpoints / "sft", "policy", False) as (source, checked):
        assert checked == read_manifest(tiny_checkpoints / "sft").version
        assert source.stat().st_mode & 0o077 == 0  # no other user can write (or read) it
        assert sorted(p.name for p in source.iterdir()) == sorted(read_manifest(tiny_checkpoints / "sft").files)
    assert not source.exists()


@pytest.mark.parametrize(("backend", "name"), [(HFPolicy, "sft"), (HFReward, "rm")])
def test_a_checkpoint_rewritten_after_its_hashes_were_checked_serves_what_was_verified(
        tiny_checkpoints, tmp_path, monkeypatch, backend, name):
    """A trainer overwrites the checkpoint right after the hashes were checked: the backend still loads the bytes
    that were hashed, under their version, and leaves no copy behind."""
    served, newer, private = tmp_path / name, tmp_path / "newer", tmp_path / "private"
    shutil.copytree(tiny_checkpoints / name, served)
    derive(served, newer, "newer", lambda tmp: perturb(tmp / WEIGHTS, 1))
    private.mkdir()
    real_verify = models.interface.verify

    def trainer_writes_meanwhile(*args, **kwargs):
        manifest = real_verify(*args, **kwargs)
        shutil.rmtree(served)
        shutil.copytree(newer, served)
        return manifest

    monkeypatch.setattr(models.interface, "verify", trainer_writes_meanwhile)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    spec = PolicySpec(name, path=served) if backend is HFPolicy else RewardSpec(path=served)
    loaded = backend.load(spec)
    assert loaded.version == read_manifest(tiny_checkpoints / name).version != read_manifest(served).version
    embedding = "model.embed_tokens.weight"
    verified = load_file(str(tiny_checkpoints / name / WEIGHTS))[embedding]
    assert torch.equal(loaded.model.state_dict()[embedding], verified)
    assert not any(private.iterdir()), "the private copy outlived the load"
