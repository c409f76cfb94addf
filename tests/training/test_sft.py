import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.chat import prompt_ids, user
from models.checkpoint import CheckpointError, verify
from tests.conftest import tiny_sft_config
from training.sft import train_sft

REPO = Path(__file__).resolve().parents[2]


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


def _cli(out: Path, steps: int, env: dict[str, str], launcher: list[str] | None = None) -> list[str]:
    cfg = tiny_sft_config(out, steps=steps)
    flags = ["--out", str(out), "--steps", str(steps), "--train-examples", str(cfg.train_examples),
             "--validation-examples", str(cfg.validation_examples), "--batch-size", str(cfg.batch_size),
             "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--eval-every", str(cfg.eval_every),
             "--save-every", str(cfg.save_every), "--eval-prompts", "0", "--max-length", str(cfg.max_length)]
    shape = cfg.model
    flags += ["--model.hidden-size", str(shape.hidden_size), "--model.intermediate-size",
              str(shape.intermediate_size), "--model.num-hidden-layers", str(shape.num_hidden_layers),
              "--model.num-attention-heads", str(shape.num_attention_heads), "--model.vocab-size",
              str(shape.vocab_size)]
    return (launcher or [sys.executable, "-m", "bon.cli"]) + ["train", "sft", *flags, "--json"]


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    reference = train_sft(tiny_sft_config(tmp_path / "ref", steps=120))
    out = tmp_path / "run" / "sft"
    proc = subprocess.Popen(_cli(out, 120, env), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out.parent / ".runs" / "sft" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), proc.stderr.read().decode()[-2000:]
    saved = json.loads(state.read_text())["step"]
    assert 0 < saved < 120 and not out.exists()
    done = subprocess.run(_cli(out, 120, env), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming SFT at step {saved}" in done.stderr
    figures = json.loads(done.stdout)
    assert figures["validation_loss"] == pytest.approx(reference.figures["validation_loss"], abs=1e-4)
    assert [h["step"] for h in _history(out)] == list(range(1, 121))


def test_two_processes_follow_the_loss_curve_of_one_on_the_same_global_batch(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cli(tmp_path / "one" / "sft", 20, env), env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "bon.cli"]
    two = subprocess.run(_cli(tmp_path / "two" / "sft", 20, env, torchrun), env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = [h["loss"] for h in _history(tmp_path / "one" / "sft")]
    b = [h["loss"] for h in _history(tmp_path / "two" / "sft")]
    assert len(a) == len(b) == 20
    # Same global batch, gradients averaged over 2 ranks: equal up to float summation order.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3
