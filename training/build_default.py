"""Build the embedded default world's checkpoints that are missing: SFT policy, reward model, optionally DPO/PPO.

The repository ships all four (checkpoints/, weights stored as float16: training/storage.py), so a fresh clone
builds nothing. `--force` retrains them with the settings their manifests record, then stores them the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError, checkpoint_root, read_manifest, verify
from training.registry import TRAINERS
from training.storage import StorageDtype, store_weights_as

log = logging.getLogger(__name__)

BASE = ("sft", "rm")
TUNED = ("dpo", "ppo")
STORAGE_DTYPE: StorageDtype = "float16"


def config_from_hyperparameters(cls: type, recorded: dict[str, Any]) -> Any:
    """The trainer config a manifest's hyper-parameters describe (fields it lacks keep their defaults)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in recorded:
            continue
        kind, value = hints[f.name], recorded[f.name]
        if dataclasses.is_dataclass(kind):
            value = config_from_hyperparameters(kind, value)
        elif Path in (kind, *typing.get_args(kind)) and value is not None:
            value = Path(value)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def _recorded(out: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(out).hyperparameters
    except CheckpointError:
        return None


def build_default(with_tuned: bool = False, force: bool = False) -> dict[str, Any]:
    """Train each default checkpoint in order unless a valid one is already there; report versions and timings."""
    root = checkpoint_root()
    report: dict[str, Any] = {"root": str(root.resolve())}
    for method in BASE + (TUNED if with_tuned else ()):
        out = root / method
        if not force:
            try:
                report[method] = {"version": verify(out).version, "built": False}
                log.info("%s: %s is present and valid", method, out)
                continue
            except CheckpointError:
                pass
        log.info("building %s into %s", method, out)
        config_cls, train = TRAINERS[method]()
        recorded = _recorded(out)
        config = config_cls(out=out) if recorded is None else dataclasses.replace(
            config_from_hyperparameters(config_cls, recorded), out=out)
        started = time.time()
        train(config)
        manifest = store_weights_as(out, STORAGE_DTYPE)
        report[method] = {"version": manifest.version, "built": True, "seconds": round(time.time() - started, 1),
                          **{k: v for k, v in manifest.figures.items() if not isinstance(v, dict | list)}}
    return report
