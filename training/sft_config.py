"""Settings of supervised fine-tuning (SFT) of the tiny Llama policy on the embedded assistant world."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import checkpoint_root


@dataclass
class ModelShape:
    """The Llama shape trained from scratch: small enough for 2 CPU cores in minutes."""

    hidden_size: int = 256
    """Width of the residual stream."""
    intermediate_size: int = 688
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int = 4
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads (multi-head; no grouped KV at this size)."""
    max_position_embeddings: int = 256
    """Longest sequence the rotary embedding is set up for."""
    vocab_size: int = 3000
    """BPE vocabulary trained on the world's texts."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")


@dataclass
class SFTConfig:
    out: Path = field(default_factory=lambda: checkpoint_root() / "sft")
    """Checkpoint directory to write (resume state lives in `<root>/.runs/<name>`)."""
    model: ModelShape = field(default_factory=ModelShape)
    """Shape of the policy."""
    train_examples: int = 24_000
    """Chat examples drawn from the world's train split."""
    validation_examples: int = 512
    """Held-out examples for the validation loss."""
    flaw_rate: float = 1 / 3
    """Share of training answers that carry a flaw: the SFT policy should misbehave at a clear rate."""
    steps: int = 900
    """Optimizer steps."""
    batch_size: int = 32
    """Global batch (split across data-parallel processes)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, linear warm-up then cosine to 10%)."""
    warmup: int = 50
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    max_length: int = 128
    """Examples are truncated to this many tokens."""
    eval_every: int = 150
    """Steps between validation passes."""
    save_every: int = 150
    """Steps between resume saves."""
    eval_prompts: int = 64
    """Held-out prompts sampled for the gold figures written to the manifest (0 skips them)."""
    seed: int = 0
    """Seed of the world, the shuffle and the initialisation."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not 0 <= self.flaw_rate <= 1:
            raise ValueError("flaw_rate must be in [0, 1]")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError("steps and batch_size must be positive")
        if self.batch_size > self.train_examples:
            raise ValueError("batch_size cannot exceed train_examples")
