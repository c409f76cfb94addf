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
