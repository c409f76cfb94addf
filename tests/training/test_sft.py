import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.chat import prompt_ids, user
from models.checkpoint import CheckpointError, verify
from tests.builders import (
    KILLS,
    bon_train,
    kill_training,
    registry_view,
    tiny_sft_config,
    train_watching_registry,
)
from training.sft import train_sft


def _history(ck: Path) -> list[dict]:
    return json.loads((ck / "training_history.json").read_text())


def test_loss_falls_and_the_checkpoint_loads_and_generates(tiny_sft):
    manifest = verify(tiny_sft, kind="policy")
    assert manifest.method == "sft" and manifest.parent is None
    assert manifest.hyperparameters["steps"] == 40
    losses = [h["loss"] for h in _history(tiny_sft)]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    assert manifest.figures["validation_loss"] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_sft))
    tok = AutoTokenizer.from_pretrained(str(tiny_sft))
    ids = torch.tensor([prompt_ids(tok, user("What is 3 + 4?"))])
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_a_tampered_weight_file_is_detected(tiny_sft, tmp_path):
    copy = tmp_path / "sft"
    subprocess.run(["cp", "-r", str(tiny_sft), str(copy)], check=True)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        verify(copy)


@pytest.mark.parametrize("moment", KILLS)
def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(moment, tmp_path):
    reference = train_sft(tiny_sft_config(tmp_path / "ref", steps=120))
    cfg = tiny_sft_config(tmp_path / "run" / "sft", steps=120)
    killed = kill_training("sft", cfg, moment, tmp_path / "killed.log")
    assert 0 < killed.step < 120 and killed.listed == {}
    assert killed.half_written == (moment == "checkpoint-write")
    done: list[subprocess.CompletedProcess] = []
    train_watching_registry(lambda: done.append(bon_train("sft", cfg)), cfg.out.parent)
    assert done[0].returncode == 0, done[0].stderr[-2000:]
    assert f"resuming SFT at step {killed.step}" in done[0].stderr
    assert registry_view(cfg.out.parent) == {"sft": True}
    figures = json.loads(done[0].stdout)
    assert figures["validation_loss"] == pytest.approx(reference.figures["validation_loss"], abs=1e-4)
    assert [h["step"] for h in _history(cfg.out)] == list(range(1, 121))


def test_two_processes_follow_the_loss_curve_of_one_on_the_same_global_batch(tmp_path):
    one = bon_train("sft", tiny_sft_config(tmp_path / "one" / "sft", steps=20))
    assert one.returncode == 0, one.stderr[-2000:]
    two = bon_train("sft", tiny_sft_config(tmp_path / "two" / "sft", steps=20), processes=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a = [h["loss"] for h in _history(tmp_path / "one" / "sft")]
    b = [h["loss"] for h in _history(tmp_path / "two" / "sft")]
    assert len(a) == len(b) == 20
    # Same global batch, gradients averaged over 2 ranks: equal up to float summation order.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3
