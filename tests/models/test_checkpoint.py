import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import CheckpointError, read_manifest, verify, write_checkpoint


def _save_weights(tmp: Path) -> None:
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"model_type": "toy"}))


def test_written_checkpoint_verifies_with_hashes_of_every_file(tmp_path):
    manifest = write_checkpoint(tmp_path / "ck", _save_weights, kind="policy", method="sft",
                                hyperparameters={"lr": 1e-3}, figures={"loss": 1.5})
    assert set(manifest.files) == {"model.safetensors", "config.json"}
    assert manifest.version.startswith("sft-")
    again = verify(tmp_path / "ck", kind="policy")
    assert again.version == manifest.version and again.figures == {"loss": 1.5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_tampered_truncated_or_extra_files_are_detected(tmp_path):
    ck = tmp_path / "ck"
    write_checkpoint(ck, _save_weights, kind="policy", method="sft")
    weights = ck / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        verify(ck)
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        verify(ck)
    weights.write_bytes(original)
    verify(ck)
    (ck / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickled"):
        verify(ck)
    (ck / "pytorch_model.bin").unlink()
    (ck / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not in the manifest"):
        verify(ck)


def test_wrong_kind_missing_and_malformed_manifests_are_refused(tmp_path):
    ck = tmp_path / "ck"
    write_checkpoint(ck, _save_weights, kind="reward", method="rm")
    with pytest.raises(CheckpointError, match="expected a policy"):
        verify(ck, kind="policy")
    (ck / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(ck)
    (ck / "manifest.json").write_text(json.dumps({"kind": "policy"}))
    with pytest.raises(CheckpointError, match="malformed|lists no files"):
        verify(ck)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        verify(tmp_path / "absent")


def test_a_failed_write_leaves_the_previous_checkpoint_in_place(tmp_path):
    ck = tmp_path / "ck"
    first = write_checkpoint(ck, _save_weights, kind="policy", method="sft")

    def crash(tmp: Path) -> None:
        _save_weights(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_checkpoint(ck, crash, kind="policy", method="sft", figures={"new": True})
    assert verify(ck).version == first.version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_refuses_to_write_pickled_weights(tmp_path):
    def pickled(tmp: Path) -> None:
        _save_weights(tmp)
        (tmp / "optimizer.pt").write_bytes(b"x")

    with pytest.raises(CheckpointError, match="pickled"):
        write_checkpoint(tmp_path / "ck", pickled, kind="policy", method="sft")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("escape", ["parent", "absolute", "link"])
def test_files_of_a_manifest_must_lie_inside_the_checkpoint(tmp_path, escape):
    ck = tmp_path / "ck"
    write_checkpoint(ck, _save_weights, kind="policy", method="sft")
    outside = tmp_path / "outside.json"
    outside.write_bytes((ck / "config.json").read_bytes())
    if escape == "link":  # same bytes, so the hash matches: only where the file lies is wrong
        (ck / "config.json").unlink()
        (ck / "config.json").symlink_to(outside)
    else:
        manifest = json.loads((ck / "manifest.json").read_text())
        name = "../outside.json" if escape == "parent" else str(outside)
        manifest["files"][name] = manifest["files"]["config.json"]
        (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        verify(ck)


def test_a_manifest_whose_version_is_not_the_hash_of_its_files_is_refused(tmp_path):
    ck = tmp_path / "ck"
    write_checkpoint(ck, _save_weights, kind="policy", method="sft")
    written = json.loads((ck / "manifest.json").read_text())
    for change in ({"version": "sft-0123456789"}, {"method": "dpo"}):
        (ck / "manifest.json").write_text(json.dumps({**written, **change}))
        with pytest.raises(CheckpointError, match="version"):
            verify(ck)


def test_verify_copies_exactly_the_bytes_it_hashed(tmp_path):
    def save(tmp: Path) -> None:
        _save_weights(tmp)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "tokenizer.json").write_text("{}")

    ck, copy = tmp_path / "ck", tmp_path / "copy"
    write_checkpoint(ck, save, kind="policy", method="sft")
    copy.mkdir()
    manifest = verify(ck, copy_to=copy)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == sorted(manifest.files)
    assert all((copy / name).read_bytes() == (ck / name).read_bytes() for name in manifest.files)
