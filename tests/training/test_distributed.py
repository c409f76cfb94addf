"""Training across machines: `bon train` under `torchrun` on two "nodes" (two launches on this host meeting at a
static rendezvous on localhost, one process each) follows the one-process run step for step and ends at the same
weights, and only rank 0 reports and writes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.servers import free_port
from models.checkpoint import verify
from tests.builders import REPO, assert_same_weights, config_flags, tiny_rm_config
from training.dpo import train_dpo
from training.dpo_config import DPOConfig

TORCHRUN = Path(sys.executable).parent / "torchrun"
NODES = 2


def train_on_nodes(method: str, cfg: object, logs: Path, timeout: float = 300) -> list[str]:
    """`torchrun ... -m bon.cli train METHOD` started once per node, as on separate machines; the stdout of each
    node once all exited 0. A node still running at `timeout` is killed with its workers."""
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = []
    for rank in range(NODES):
        command = [str(TORCHRUN), "--nnodes", str(NODES), "--nproc-per-node", "1", "--node-rank", str(rank),
                   "--rdzv-backend", "static", "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "bon.cli", "train", method, *config_flags(cfg), "--json"]
        with (logs / f"node{rank}.out").open("w") as out, (logs / f"node{rank}.err").open("w") as err:
            nodes.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=err,
                                          start_new_session=True))
    try:
        codes = [node.wait(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    for rank, code in enumerate(codes):
        assert code == 0, (logs / f"node{rank}.err").read_text()[-3000:]
    return [(logs / f"node{rank}.out").read_text() for rank in range(NODES)]


def history(out: Path) -> list[dict[str, float]]:
    return json.loads((out / "training_history.json").read_text())


def assert_same_run(two_nodes: Path, one_process: Path, metrics: set[str]) -> None:
    """Same steps, the same per-step metrics and the same final weights, to float rounding: each process pads its
    half of the batch to its own width and the gradients are summed in another order. Adam divides each step by
    the gradient's running scale, so where a gradient is near zero that rounding grows: 1.3e-5 seen on one weight
    of 4,608 in one run, hence the 1e-4 the other trainers' same-run checks use."""
    two, one = history(two_nodes), history(one_process)
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(two, one, strict=True):
        assert a.keys() == b.keys()
        for name in metrics & b.keys():
            assert a[name] == pytest.approx(b[name], abs=1e-4), (a["step"], name)
    assert_same_weights(two_nodes, one_process, atol=1e-4)
    assert verify(two_nodes).hyperparameters["world_size"] == NODES


def test_torchrun_is_installed_beside_the_interpreter():
    assert TORCHRUN.is_file()


def test_reward_model_on_two_nodes_matches_one_process(tiny_rm: Path, tiny_sft: Path, tmp_path: Path):
    cfg = tiny_rm_config(tmp_path / "rm", tiny_sft)  # the `tiny_rm` fixture's run, in one process
    main_out, other_out = train_on_nodes("rm", cfg, tmp_path)
    assert json.loads(main_out)["version"] == verify(cfg.out).version and other_out == ""
    assert_same_run(cfg.out, tiny_rm, {"loss", "rewards/margins", "rewards/accuracies"})


def test_dpo_on_two_nodes_matches_one_process(tiny_sft: Path, tmp_path: Path):
    # A private copy of the policy, so that the pairs and reference log-probs cached beside it are computed by the
    # two-node run (the log-probs half on each node, then gathered) and only reused by the one-process run.
    parent = tmp_path / "root" / "sft"
    shutil.copytree(tiny_sft, parent)
    tiny = dict(parent=parent, pairs=64, eval_pairs=16, epochs=2.0, batch_size=16, lr=1e-3, warmup=1,
                max_length=96, eval_every=4, save_every=100, val_kl_samples=0, kl_samples=0, eval_prompts=0)
    two_nodes = DPOConfig(out=tmp_path / "root" / "dpo-2", **tiny)  # type: ignore[arg-type]
    main_out, other_out = train_on_nodes("dpo", two_nodes, tmp_path)
    assert json.loads(main_out)["version"] == verify(two_nodes.out).version and other_out == ""
    # At step 1 the policy is the reference: the gathered reference log-probs line up with their pairs.
    assert history(two_nodes.out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    one_process = DPOConfig(out=tmp_path / "root" / "dpo-1", **tiny)  # type: ignore[arg-type]
    train_dpo(one_process)
    assert_same_run(two_nodes.out, one_process.out, {"loss", "rewards/margins", "eval/loss"})
