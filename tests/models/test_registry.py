"""The checkpoint registry: listing, path confinement and every check before a load, on tiny real checkpoints:
`build_swap_root`'s good DPO/PPO/RM variants, one broken checkpoint per failure a load must survive, and links
that leave the root (the hot-swap server tests serve the same root)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import CheckpointError
from models.registry import CheckpointNotFound, OutsideRoot, Registry, check_safetensors, validate_checkpoint
from tests.builders import BAD_POLICIES, BAD_REWARDS, LOAD_FAILS, WEIGHTS, build_swap_root, build_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), steps=0)


@pytest.fixture(scope="module")
def root(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_swap_root(tiny, tmp_path_factory.mktemp("root"))


def test_list_reads_every_manifest_under_the_root(root):
    (root / ".dpo.tmp-123").mkdir()  # write_checkpoint's temporaries are not checkpoints
    (root / "latest").symlink_to(root / "ppo")  # an alias inside the root is listed
    try:
        found = {info.name: info for info in Registry(root).list()}
    finally:
        (root / "latest").unlink()
    assert {"sft", "dpo", "ppo", "rm", "rm-v2", "latest", *BAD_POLICIES, LOAD_FAILS, "bad/linked-file"} <= set(found)
    assert "escape" not in found and not any(name.startswith(".") for name in found)
    dpo = found["dpo"]
    assert (dpo.kind, dpo.method, dpo.parent) == ("policy", "dpo", found["sft"].version)
    assert dpo.figures == {"gold_reward": 0.4} and dpo.created > 0 and dpo.created_iso.endswith("Z")
    assert dpo.version.startswith("dpo-") and dpo.version != found["ppo"].version and dpo.size_bytes > 0
    assert (found["rm-v2"].kind, found["rm-v2"].valid) == ("reward", None)  # listing alone hashes nothing
    assert found["latest"].version == found["ppo"].version


def test_list_with_verification_flags_the_broken_ones(root):
    found = {info.name: info for info in Registry(root).list(verify_hashes=True)}
    assert all(found[name].valid for name in ("sft", "dpo", "ppo", "rm", "rm-v2"))
    for name in [*BAD_POLICIES, *BAD_REWARDS, "bad/linked-file"]:
        assert found[name].valid is False and found[name].error, name


@pytest.mark.parametrize("ref", ["../sft", "dpo/../../sft", "escape", "http://example.com/dpo", "s3://bucket/dpo",
                                 "file:///etc", "hf://org/model"])
def test_resolve_refuses_anything_outside_the_root(root, ref):
    with pytest.raises(OutsideRoot):
        Registry(root).resolve(ref)


def test_resolve_accepts_names_and_absolute_paths_inside_the_root(root, tiny):
    registry = Registry(root)
    assert registry.resolve("dpo") == (root / "dpo").resolve()
    assert registry.resolve(str(root / "ppo")) == (root / "ppo").resolve()
    with pytest.raises(OutsideRoot, match="outside the checkpoint root"):
        registry.resolve(str(tiny / "sft"))  # a valid checkpoint, but not under this root
    with pytest.raises(CheckpointNotFound):
        registry.resolve("nope")


def test_good_checkpoints_validate_for_their_kind_only(root):
    registry = Registry(root)
    path, manifest = registry.validate("dpo", "policy")
    assert path == (root / "dpo").resolve() and manifest.method == "dpo"
    assert registry.validate("rm-v2", "reward")[1].kind == "reward"
    with pytest.raises(CheckpointError, match="expected a policy"):
        registry.validate("rm", "policy")
    with pytest.raises(CheckpointError, match="expected a reward"):
        registry.validate("dpo", "reward")


@pytest.mark.parametrize("name", sorted({**BAD_POLICIES, **BAD_REWARDS}))
def test_each_broken_checkpoint_is_refused_with_its_reason(root, name):
    kind = "reward" if name in BAD_REWARDS else "policy"
    with pytest.raises(CheckpointError, match={**BAD_POLICIES, **BAD_REWARDS}[name]):
        Registry(root).validate(name, kind)


def test_a_weight_file_linked_outside_the_root_is_refused(root):
    with pytest.raises(OutsideRoot, match="symbolic link"):
        Registry(root).validate("bad/linked-file", "policy")


def test_weights_that_do_not_fit_the_config_pass_the_registry(root):
    """Only loading can tell; the hot-swap tests check that such a load fails and the old model serves on."""
    Registry(root).validate(LOAD_FAILS, "policy")


def test_safetensors_headers_catch_truncation_and_trailing_bytes(tmp_path):
    weights = tmp_path / WEIGHTS
    save_file({"w": torch.zeros(4, 4)}, str(weights))
    check_safetensors(weights)
    data = weights.read_bytes()
    weights.write_bytes(data + b"junk")
    with pytest.raises(CheckpointError, match="bytes after the last tensor"):
        check_safetensors(weights)
    weights.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        check_safetensors(weights)
    weights.write_bytes(b"\x00\x01")
    with pytest.raises(CheckpointError, match="truncated"):
        check_safetensors(weights)


def test_a_checkpoint_outside_any_registry_is_confined_to_its_own_directory(root, tiny):
    validate_checkpoint(tiny / "sft", "policy")
    with pytest.raises(OutsideRoot):
        validate_checkpoint(root / "bad/linked-file", "policy")
