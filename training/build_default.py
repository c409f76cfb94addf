"""Build the embedded default world's checkpoints that are missing: SFT policy, reward model, optionally DPO/PPO."""

from __future__ import annotations

import logging
import time
from typing import Any

from models.checkpoint import CheckpointError, checkpoint_root, verify
from training.registry import TRAINERS

log = logging.getLogger(__name__)

BASE = ("sft", "rm")
TUNED = ("dpo", "ppo")


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
        started = time.time()
        manifest = train(config_cls(out=out))
        report[method] = {"version": manifest.version, "built": True, "seconds": round(time.time() - started, 1),
                          **{k: v for k, v in manifest.figures.items() if not isinstance(v, dict | list)}}
    return report
