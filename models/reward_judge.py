"""The embedded world's gold judge as a reward backend: a held-out "guard" that scores what the RM chose.

Serving with `--guard judge` shows overoptimisation while serving: the server scores each chosen answer with
this second reward and exports the gap between the selecting RM's score and the guard's. In the embedded
world the gold judge is the natural guard (it plays the annotator the RM imitates); with real checkpoints a
second, held-out RM plays it (`--guard hf --guard-path ...`).

The judge lives in `world/`, which is standard library only, so the guard loads no training code; the server
imports this module (through `models.loader`) only when a spec names the judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import world
from models.interface import Activation, RewardSpec, Score, ScoreItem


class JudgeReward:
    """`RewardBackend` over `world.score(prompt, answer)`: the last user turn is the prompt."""

    version = "gold-judge"
    activation: Activation = "identity"
    """The judge's score is a reward already, not a logit."""
    label: str | None = None
    max_length: int | None = None
    """The judge reads text of any length."""

    def __init__(self) -> None:
        self._score = world.score

    @classmethod
    def load(cls, spec: RewardSpec) -> JudgeReward:
        """The judge has no weights: a spec with backend "judge" is all it needs."""
        return cls()

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        """The gold judge reads text, not tokens: every score has `tokens` 0."""
        out = []
        for messages, answer in items:
            prompt = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
            out.append(Score(float(self._score(prompt, answer)), 0))
        return out

    def close(self) -> None:
        pass
