"""The embedded world's gold judge as a reward backend: a held-out "guard" that scores what the RM chose.

Serving with `--guard judge` shows overoptimisation while serving: the server scores each chosen answer with
this second reward and exports the gap between the selecting RM's score and the guard's. In the embedded
world the gold judge is the natural guard (it plays the annotator the RM imitates); with real checkpoints a
second, held-out RM plays it (`--guard hf --guard-path ...`).

This is the only place `models/` reaches into `training/`: `training.world` is imported when a judge is
built, never at module import, so a server without the guard never loads the training package.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.backends import ScoreItem


class JudgeReward:
    """`RewardBackend` over `training.world.score(prompt, answer)`: the last user turn is the prompt."""

    version = "gold-judge"

    def __init__(self) -> None:
        from training import world  # lazily: see the module docstring

        self._score = world.score

    def score_batch(self, items: Sequence[ScoreItem]) -> list[float]:
        out = []
        for messages, answer in items:
            prompt = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
            out.append(float(self._score(prompt, answer)))
        return out

    def close(self) -> None:
        pass
