"""The checkpoint registry: listing, path confinement and every check before a load, on tiny real checkpoints.

`build_swap_root` is also what the hot-swap server tests serve: good DPO/PPO/RM variants of the tiny
checkpoints, one broken checkpoint per failure a load must survive, and a link that leaves the root.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from models.checkpoint import MANIFEST, CheckpointError, read_manifest, write_checkpoint
from models.registry import CheckpointNotFound, OutsideRoot, Registry, check_safetensors, validate_checkpoint
from tests.server.conftest import build_tiny_checkpoints

WEIGHTS = "model.safetensors"


def perturb(weights: Path, seed: int, scale: float = 0.05) -> None:
    """Nudge every tensor a little: a different checkpoint (and version) that still behaves."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})


def derive(src: Path, dst: Path, method: str, change: Callable[[Path], None] | None = None,
           figures: dict | None = None) -> None:
    """A checkpoint written (and hashed) by `write_checkpoint` from `src`'s files, after `change(tmp_dir)`."""
    parent = read_manifest(src)

    def save(tmp: Path) -> None:
        for f in src.iterdir():
            if f.name != MANIFEST:
                shutil.copy2(f, tmp / f.name)
        if change is not None:
            change(tmp)

    write_checkpoint(dst, save, kind=parent.kind, method=method, parent=parent.version, figures=figures)


def _edit_config(**values: object) -> Callable[[Path], None]:
    def change(tmp: Path) -> None:
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**config, **values}))
    return change


def _truncate(tmp: Path) -> None:
    data = (tmp / WEIGHTS).read_bytes()
    (tmp / WEIGHTS).write_bytes(data[: len(data) - 256])


def _grow_tokenizer(tmp: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    tokenizer.add_tokens([f"extra{i}" for i in range(40)])
    tokenizer.save_pretrained(str(tmp))


def _drop_chat_template(tmp: Path) -> None:
    (tmp / "chat_template.jinja").unlink()
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))


BAD_POLICIES = {
    "bad/missing-file": "missing file model.safetensors",
    "bad/flipped-byte": "sha256 mismatch",
    "bad/truncated": "truncated weights",
    "bad/unknown-arch": "unknown architecture",
    "bad/tokenizer": "tokenizer does not match",
    "bad/no-chat-template": "no chat template",
    "bad/remote-code": "trust_remote_code is off",
}
"""Refused by the registry before anything is loaded: checkpoint -> what the message says."""
LOAD_FAILS = "bad/wrong-shapes"
"""Passes every registry check; its weights do not fit its config, so loading it fails."""
BAD_REWARDS = {"bad/rm-flipped-byte": "sha256 mismatch"}


def build_swap_root(tiny: Path, root: Path) -> Path:
    """`root` with sft, dpo, ppo, rm, rm-v2 (all working), the broken checkpoints above, `escape` (a link to a
    valid checkpoint outside the root) and `bad/linked-file` (a weight file linked to outside the root)."""
    shutil.copytree(tiny / "sft", root / "sft")
    shutil.copytree(tiny / "rm", root / "rm")
    sft, rm = root / "sft", root / "rm"
    derive(sft, root / "dpo", "dpo", lambda tmp: perturb(tmp / WEIGHTS, 1), figures={"gold_reward": 0.4})
    derive(sft, root / "ppo", "ppo", lambda tmp: perturb(tmp / WEIGHTS, 2), figures={"gold_reward": 0.5})
    derive(rm, root / "rm-v2", "rm", lambda tmp: perturb(tmp / WEIGHTS, 3))
    derive(sft, root / "bad/missing-file", "dpo")
    (root / "bad/missing-file" / WEIGHTS).unlink()
    for name, src in (("bad/flipped-byte", sft), ("bad/rm-flipped-byte", rm)):
        derive(src, root / name, read_manifest(src).method)
        data = bytearray((root / name / WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (root / name / WEIGHTS).write_bytes(bytes(data))
    derive(sft, root / "bad/truncated", "dpo", _truncate)
    derive(sft, root / "bad/unknown-arch", "dpo", _edit_config(model_type="nope"))
    derive(sft, root / "bad/tokenizer", "dpo", _grow_tokenizer)
    derive(sft, root / "bad/no-chat-template", "dpo", _drop_chat_template)
    derive(sft, root / "bad/remote-code", "dpo", _edit_config(auto_map={"AutoModelForCausalLM": "evil.Model"}))
    derive(sft, root / LOAD_FAILS, "dpo", _edit_config(hidden_size=128, intermediate_size=256))

    def link_weights_outside(tmp: Path) -> None:
        (tmp / WEIGHTS).unlink()
        (tmp / WEIGHTS).symlink_to(tiny / "sft" / WEIGHTS)

    derive(sft, root / "bad/linked-file", "dpo", link_weights_outside)
    (root / "escape").symlink_to(tiny / "sft")
    return root


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
