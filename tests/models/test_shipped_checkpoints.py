"""The embedded default checkpoints that ship in the repository: they verify, chain, and match results/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from models.checkpoint import verify

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"sft": "policy", "rm": "reward", "dpo": "policy", "ppo": "policy"}


@pytest.mark.parametrize("name, kind", SHIPPED.items())
def test_shipped_checkpoint_verifies_and_stores_float16(name: str, kind: str) -> None:
    path = REPO / "checkpoints" / name
    manifest = verify(path, kind=kind)  # every file's sha256 against the manifest
    assert manifest.method == name
    assert manifest.hyperparameters["storage_dtype"] == "float16"
    assert json.loads((path / "config.json").read_text())["dtype"] == "float32", "loaders must upcast"
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        dtypes = {str(weights.get_slice(key).get_dtype()) for key in weights.keys()}
    assert dtypes == {"F16"}
    # What the rounding changed was measured at conversion; far below what any reported figure resolves.
    change = manifest.figures["storage"]
    assert change["dtype"] == "float16"
    assert (change["max_token_kl"] < 1e-4) if kind == "policy" else (change["max_reward_diff"] < 1e-2)


def test_shipped_checkpoints_chain_to_the_shipped_sft() -> None:
    sft = verify(REPO / "checkpoints" / "sft").version
    for name in ("rm", "dpo", "ppo"):
        assert verify(REPO / "checkpoints" / name).parent == sft


@pytest.mark.parametrize("name", ["rm", "dpo", "ppo"])
def test_results_are_those_of_the_shipped_checkpoints(name: str) -> None:
    manifest = verify(REPO / "checkpoints" / name)
    results = json.loads((REPO / "results" / f"{name}.json").read_text())
    assert results["version"] == manifest.version
    assert results["gold_reward_mean" if name != "rm" else "accuracy_vs_gold"] == manifest.figures[
        "gold_reward_mean" if name != "rm" else "accuracy_vs_gold"]
