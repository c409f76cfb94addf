"""What every trainer shares: data parallelism, resumable state, progress and metric history.

Trainers run unchanged under `torchrun --nproc_per_node K`: each rank takes its slice of the global batch,
gradients are averaged by DistributedDataParallel (gloo on CPU), and only rank 0 writes files. Resume state is
safetensors plus JSON (no pickle), written atomically, so an interrupted run picks up at its last save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.files import replacing_directory
from models.checkpoint import Kind, Manifest, write_checkpoint, write_json_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")

PREPARATION_TIMEOUT = timedelta(hours=24)
"""How long the other processes wait for rank 0 to prepare the data (`Dist.main_first`)."""


@dataclass(frozen=True)
class Dist:
    """This process among the data-parallel processes of a run (rank 0 of 1 without `torchrun`)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of a global batch (contiguous, so 1 and K processes see the same examples)."""
        per_rank = len(items) // self.world_size
        if per_rank * self.world_size != len(items):
            raise ValueError(f"global batch {len(items)} does not split over {self.world_size} processes")
        return list(items[self.rank * per_rank : (self.rank + 1) * per_rank])

    def wrap_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` whose gradients are averaged over the processes (itself when there is one)."""
        if self.world_size == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the processes."""
        if self.world_size == 1:
            return value
        value = value.detach().clone()
        torch_dist.all_reduce(value)
        return value / self.world_size

    def progress(self, total: int, initial: int, desc: str) -> tqdm:
        """A progress bar that rank 0 shows."""
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.is_main, dynamic_ncols=True)

    def main_first(self, build: Callable[[], T]) -> T:
        """`build()` on rank 0, then on the other ranks once it returned: rank 0 writes the cache they read."""
        if self.world_size == 1:
            return build()
        # Rank 0 may build for longer than gloo lets a collective wait (30 minutes), as when it samples tens of
        # thousands of preference pairs on a CPU. So the others wait in a group of their own with a longer limit;
        # the training's collectives keep the default, and a rank 0 that fails still ends the wait at once.
        waiting = torch_dist.new_group(timeout=PREPARATION_TIMEOUT)
        if self.is_main:
            built = build()
        torch_dist.barrier(group=waiting)
        torch_dist.destroy_process_group(waiting)
        return built if self.is_main else build()


def init_distributed() -> Dist:
    """Join the process group that `torchrun` describes in the environment; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo")
    return Dist(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())


def batches(n_items: int, batch_size: int, seed: int, start_step: int, total_steps: int) -> Iterator[list[int]]:
    """Index batches for steps `start_step..total_steps-1`, a fresh shuffle per epoch, the same on every rank.

    The order depends only on `seed` and the step, so a resumed run sees exactly the batches it would have seen.
    """
    per_epoch = n_items // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_items} examples cannot fill one batch of {batch_size}")
    order: list[int] = []
    epoch = -1
    for step in range(start_step, total_steps):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = list(range(n_items))
            random.Random(seed * 100_003 + epoch).shuffle(order)
        i = (step % per_epoch) * batch_size
        yield order[i : i + batch_size]


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


@dataclass
class RunState:
    """What a trainer needs beyond weights to continue: the step, the metric history, anything else small."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        per_param.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})


def save_resume(run_dir: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                state: RunState) -> None:
    """Atomically replace `run_dir` with the weights, optimizer moments and `state` of this moment."""
    with replacing_directory(Path(run_dir)) as tmp:
        for name, model in models.items():
            weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
            save_file(weights, str(tmp / f"{name}.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state().tolist()}
        write_json_atomic(tmp / "state.json", {"step": state.step, "history": state.history, "extra": state.extra,
                                                "optimizer": opt_meta, "rng": rng})


def config_fingerprint(cfg: Any) -> str:
    """A stable digest of a trainer config: resume state is only reused by the run that made it."""
    data = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    data.pop("out", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_resume(run_dir: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                fingerprint: str) -> RunState | None:
    """Restore what `save_resume` wrote; None when there is nothing to resume or it was another config's run."""
    run_dir = Path(run_dir)
    if not (run_dir / "state.json").is_file():
        return None
    meta = json.loads((run_dir / "state.json").read_text())
    if meta["extra"].get("config") != fingerprint:
        log.warning("ignoring resume state in %s: it belongs to a run with another config", run_dir)
        return None
    for name, model in models.items():
        model.load_state_dict(load_file(str(run_dir / f"{name}.safetensors")))
    _restore_optimizer(optimizer, load_file(str(run_dir / "optimizer.safetensors")), meta["optimizer"])
    torch.set_rng_state(torch.tensor(meta["rng"]["torch"], dtype=torch.uint8))
    return RunState(step=meta["step"], history=meta["history"], extra=meta["extra"])


def save_trained(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 history: list[dict[str, float]], *, kind: Kind, method: str, parent: str | None,
                 hyperparameters: dict[str, Any], figures: dict[str, Any]) -> Manifest:
    """Write a trained model, its tokenizer and its metric history as an atomic, hashed checkpoint."""

    def save(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_history.json").write_text(json.dumps(history))

    return write_checkpoint(out, save, kind=kind, method=method, parent=parent,
                            hyperparameters=hyperparameters, figures=figures)


def run_dir_for(out_dir: Path) -> Path:
    """Resume state sits beside the checkpoint, hidden: `checkpoints/.runs/<name>`."""
    out_dir = Path(out_dir)
    return out_dir.parent / ".runs" / out_dir.name


@dataclass(frozen=True)
class Run:
    """A trainer's run as this process sees it: its place among the processes and its resume directory."""

    dist: Dist
    dir: Path

    def resume(self, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, config: Any) -> RunState:
        """The state an earlier run of `config` saved, its weights and moments loaded; a fresh state otherwise."""
        fingerprint = config_fingerprint(config)
        return load_resume(self.dir, models, optimizer, fingerprint) or RunState(extra={"config": fingerprint})


def start_run(out: Path, seed: int) -> Run:
    """What every trainer does first: join the processes `torchrun` started, seed, and find the resume state
    of the checkpoint it will write to `out`."""
    dist = init_distributed()
    set_seed(seed)
    return Run(dist, run_dir_for(out))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, models: Sequence[torch.nn.Module],
                   max_grad_norm: float = 1.0) -> None:
    """Backpropagate `loss`, clip each model's gradient norm to `max_grad_norm`, and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for model in models:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, float("inf")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * (var / n) ** 0.5


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
