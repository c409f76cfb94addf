"""bench/gpu.py, the benchmark a lent GPU runs: its shapes, padded tokenizer, floors and ratios here, and the whole
run rehearsed end to end on vLLM's CPU build with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForSequenceClassification

from bench.gpu import SHAPES, STEP_BASE_TOKENS, VOCAB, padded_tokenizer, parameter_count, summarize, with_floors
from models.chat import prompt_ids
from models.checkpoint import checkpoint_root
from tests.builders import REPO


def test_the_shapes_have_the_parameters_of_the_models_they_copy():
    policy, rm = SHAPES["6.7b"]
    ids = {"pad_id": 0, "bos_id": 1, "eos_id": 2}
    assert parameter_count(policy.config(torch.bfloat16, **ids)) == 6_738_415_616  # Llama-2-7B
    assert parameter_count(rm.config(torch.bfloat16, **ids)) == 1_100_048_384  # TinyLlama-1.1B
    with torch.device("meta"):
        classifier = LlamaForSequenceClassification(rm.config(torch.bfloat16, **ids, num_labels=1))
    # the RM: TinyLlama with a one-output head instead of its 32000-word one
    assert sum(p.numel() for p in classifier.parameters()) == 1_100_048_384 - VOCAB * 2048 + 2048
    assert policy.kv_bytes_per_token(torch.bfloat16) == 2 * 32 * 4096 * 2  # 512 KiB a token


def test_the_padded_tokenizer_decodes_every_id_and_tokenizes_as_the_shipped_one():
    shipped = AutoTokenizer.from_pretrained(str(checkpoint_root() / "sft"), local_files_only=True)
    tokenizer = padded_tokenizer(checkpoint_root() / "sft")
    assert len(tokenizer) == VOCAB > len(shipped)
    for token_id in (5, len(shipped), VOCAB - 1):
        assert tokenizer.decode([token_id]) and tokenizer.convert_ids_to_tokens(token_id)
    assert tokenizer.decode([VOCAB - 1]) == f"<w{VOCAB - 1 - len(shipped)}>"
    messages = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
    assert prompt_ids(tokenizer, messages) == prompt_ids(shipped, messages)


def _point(n: int, bon: float, score: float, vllm_n: float, separate: float) -> dict:
    return {"best_of": n, "bon": {"latency_s_p50": bon, "score_s_p50": score}, "vllm_n": {"latency_s_p50": vllm_n},
            "vllm_separate": {"latency_s_p50": separate}}


def test_the_ratios_and_the_floor():
    summary = summarize([_point(1, 0.9, 0.05, 0.8, 0.8), _point(16, 1.1, 0.1, 1.0, 1.2)])
    assert summary["bon_over_vllm_n1"] == pytest.approx(1.1 / 0.8)
    assert summary["score_share"] == pytest.approx(0.1 / 1.1)
    assert summary["bon_over_vllm_n"] == pytest.approx(1.1)
    assert summary["bon_without_scoring_over_vllm_n"] == pytest.approx(1.0)
    assert summary["vllm_separate_over_vllm_n"] == pytest.approx(1.2)
    assert summarize([_point(1, 1, 0, 1, 1)])["status"] == "skipped"

    policy, _ = SHAPES["6.7b"]
    models = {"policy": {"parameters": 6_738_415_616}}
    (step,) = with_floors([{"n": 16, "step_s": 0.009, "prompt_tokens_p50": 40}], models, policy, torch.bfloat16,
                          bandwidth=3e12, max_tokens=128)
    kv = 16 * (40 + 64) * 2 * 32 * 4096 * 2
    assert step["kv_bytes"] == kv and step["weight_bytes"] == 2 * 6_738_415_616
    assert step["floor_s"] == pytest.approx((2 * 6_738_415_616 + kv) / 3e12)
    assert step["over_floor"] == pytest.approx(0.009 / step["floor_s"])


@pytest.mark.vllm
@pytest.mark.slow
def test_the_gpu_benchmark_rehearsed_on_the_cpu(tmp_path: Path):
    """The run a GPU gets, on tiny models: both servers start from the models it builds, every point is timed,
    and the results carry what the issue asks for. Two minutes of two vLLM engines starting on a CPU, so it runs
    in `make test-slow`, and before each stay on a GPU."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--out", str(out), "--shape", "tiny", "--device", "cpu", "--best-of",
         "1,16", "--step-best-of", "1", "--repeats", "1", "--max-tokens", str(STEP_BASE_TOKENS + 8)],
        cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["device"] == "cpu" and results["machine"]["vllm"]
    assert results["models"]["rm"]["parameters"] > 0 and results["models"]["tokenizer_entries"] == VOCAB
    assert [p["best_of"] for p in results["points"]] == [1, 16]
    for point in results["points"]:
        for target in ("bon", "vllm_n", "vllm_separate"):
            assert point[target]["latency_s_p50"] > 0, (point["best_of"], target)
        assert 0 < point["bon"]["score_s_p50"] < point["bon"]["latency_s_p50"]
    (step,) = results["decode_steps"]
    assert step["n"] == 1 and step["floor_s"] > 0 and step["weight_bytes"] > 0
    assert results["summary"]["best_of"] == 16 and results["summary"]["score_share"] > 0
    assert "decode step ms" in done.stdout
