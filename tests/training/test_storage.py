"""Storing weights as float16 (the shipped default checkpoints) and rebuilding from a manifest's settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from models.checkpoint import verify
from training.build_default import config_from_hyperparameters
from training.registry import TRAINERS
from training.storage import store_weights_as


def _dtypes(path: Path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        return {str(weights.get_slice(key).get_dtype()) for key in weights.keys()}


@pytest.mark.parametrize("name, kind", [("sft", "policy"), ("rm", "reward")])
def test_float16_storage_is_a_new_verified_version_that_loads_as_float32(
        tiny_checkpoints: Path, tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name
    shutil.copytree(tiny_checkpoints / name, path)
    before = verify(path)
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    original = cls.from_pretrained(str(path)).eval()

    after = store_weights_as(path, "float16", parent="sft-0123456789")

    assert verify(path, kind=kind).version == after.version != before.version
    assert after.parent == "sft-0123456789" and after.figures["storage"]["dtype"] == "float16"
    assert after.hyperparameters == before.hyperparameters | {"storage_dtype": "float16"}
    assert _dtypes(path) == {"F16"} and _dtypes(tiny_checkpoints / name) == {"F32"}
    size = (path / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_checkpoints / name / "model.safetensors").stat().st_size
    stored = cls.from_pretrained(str(path)).eval()
    assert next(stored.parameters()).dtype == torch.float32
    # The stored weights are the original ones rounded to float16, exactly.
    for (key, a), b in zip(original.state_dict().items(), stored.state_dict().values(), strict=True):
        assert torch.equal(a.to(torch.float16).to(torch.float32), b), key
    # And the recorded change is what these weights give on the probe (recomputed independently here).
    ids = torch.randint(0, original.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = original(ids).logits, stored(ids).logits
    if kind == "policy":
        assert 0 < after.figures["storage"]["max_token_kl"] < 1e-3
        assert torch.allclose(a.softmax(-1), b.softmax(-1), atol=1e-3)
    else:
        assert 0 <= after.figures["storage"]["max_reward_diff"] < 1e-2
        assert (a - b).abs().max() < 1e-2


@pytest.mark.parametrize("method", ["sft", "rm", "dpo", "ppo"])
def test_a_config_rebuilds_from_its_manifest_hyperparameters(method: str, tmp_path: Path) -> None:
    """`bon build-default --force` retrains with the settings a manifest records: the round trip is exact."""
    config_cls, _ = TRAINERS[method]()
    defaults = config_cls(out=tmp_path / method)
    changed = dataclasses.replace(defaults, seed=defaults.seed + 7)
    recorded = json.loads(json.dumps(dataclasses.asdict(changed) | {"world_size": 1, "storage_dtype": "float16"},
                                     default=str))
    assert config_from_hyperparameters(config_cls, recorded) == changed
