"""Settings of Direct Preference Optimization (DPO, or IPO) of the SFT policy on labelled preference pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.checkpoint import checkpoint_root


@dataclass
class DPOConfig:
    out: Path = field(default_factory=lambda: checkpoint_root() / "dpo")
    """Checkpoint directory to write (resume state lives in `<root>/.runs/<name>`)."""
    parent: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """SFT policy: initialises the policy, is the frozen reference, and samples half the pairs' answers."""
    beta: float = 0.1
    """Strength of the implicit KL constraint: higher keeps the policy closer to the reference."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: DPO's −log σ(βh) on summed log-probs; ipo: IPO's (h − 1/2β)² on length-averaged ones (as TRL)."""
    label_smoothing: float = 0.0
    """Assumed label-flip rate ε of conservative DPO (sigmoid only); 0 is plain DPO."""
    pairs: int = 10_000
    """Training pairs; with the three fields below, the same cached pairs the RM trains on."""
    eval_pairs: int = 1_000
    """Held-out pairs on test-split prompts, for the validation loss and reward accuracy."""
    policy_share: float = 0.5
    """Share of pairs whose two answers are SFT-policy samples (the rest are written by the world's generator)."""
    annotator_temperature: float = 0.5
    """Bradley-Terry noise of the annotator: p(a > b) = sigmoid((gold_a - gold_b) / T)."""
    epochs: float = 1.0
    """Passes over the training pairs."""
    batch_size: int = 32
    """Pairs per optimizer step (global, split across processes)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, linear warm-up then cosine to 10%)."""
    warmup: int = 20
    """Warm-up steps."""
    max_length: int = 160
    """Token limit of one prompt + answer sequence."""
    eval_every: int = 100
    """Steps between validation passes."""
    save_every: int = 100
    """Steps between resume saves."""
    val_kl_samples: int = 64
    """Policy samples for the KL estimate at each validation pass (4 per held-out prompt; 0 skips it)."""
    kl_samples: int = 512
    """Policy samples for the final KL(π‖π_ref) estimate in the manifest (4 per held-out prompt)."""
    eval_prompts: int = 250
    """Held-out prompts for the final gold figures, 4 answers each; 0 skips them. 250 on `test` with seed 0 are
    the prompts `bon eval policy` samples by default, so the figures compare with the SFT policy's."""
    eval_split: Literal["validation", "test"] = "test"
    """Split of the prompts for the final gold figures."""
    seed: int = 0
    """Seed of the pairs, the shuffle, the evaluation prompts and their samples."""

    def __post_init__(self) -> None:
        self.out, self.parent = Path(self.out), Path(self.parent)
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ValueError("loss_type must be sigmoid or ipo")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        if not 0 <= self.policy_share <= 1:
            raise ValueError("policy_share must be in [0, 1]")
        if self.annotator_temperature <= 0:
            raise ValueError("annotator_temperature must be positive")
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if self.batch_size > self.pairs:
            raise ValueError("batch_size cannot exceed pairs")
        if self.eval_split not in ("validation", "test"):
            raise ValueError("eval_split must be validation or test")
        if self.eval_pairs <= 0:
            raise ValueError("eval_pairs must be positive")

    @property
    def steps(self) -> int:
        return max(1, int(self.pairs * self.epochs) // self.batch_size)
