"""The transformers reward backend: an `AutoModelForSequenceClassification` with one label, encoder or decoder.

Every candidate is rendered as [conversation..., assistant answer] with the RM's own chat template and
tokenized with the RM's own tokenizer (never the policy's ids). Batches are right-padded, as the RM trainer
pads them, and the score is the raw logit `logits[:, 0]`: a decoder RM reads it at the last non-pad token
(transformers finds it through `config.pad_token_id`), an encoder RM at [CLS]. A batch with an item longer than
`max_length` (the smaller of the config's positions and the tokenizer's `model_max_length`) is refused with
`ContextLengthExceeded`, never scored truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.batching import pad_batch
from models.chat import scored_ids
from models.checkpoint import CheckpointError
from models.interface import (
    ContextLengthExceeded,
    RewardSpec,
    Score,
    ScoreItem,
    classify_activation,
    resolve_device,
    verified_copy,
)


def score_sequences(model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Raw scalar scores (B,) of token-id sequences, right-padded: the head's single logit, never a softmax.

    The RM trainer scores with it (loss and figures) as this backend does, so both read a sequence alike.
    """
    ids, mask = pad_batch(seqs, pad_id, device=next(model.parameters()).device)  # (B, T)
    return model(input_ids=ids, attention_mask=mask).logits[:, 0]  # (B,)


class HFReward:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, version: str):
        if model.config.num_labels != 1:
            raise CheckpointError(f"a reward model has one label, this one has {model.config.num_labels}")
        if tokenizer.chat_template is None:
            raise CheckpointError("the reward model's tokenizer has no chat template")
        if tokenizer.pad_token_id is None:
            # Decoder RMs often ship without a pad token; EOS is the usual stand-in.
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.activation = classify_activation(model.config)
        self.label: str | None = (model.config.id2label or {}).get(0)
        limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_length = min(x for x in limits if isinstance(x, int) and x > 0)

    @classmethod
    def load(cls, spec: RewardSpec) -> HFReward:
        if spec.path is None:
            raise CheckpointError("the hf reward backend needs a checkpoint path")
        device = resolve_device(spec.options.get("device", "cpu"))
        dtype = torch.float32 if device == "cpu" else "auto"
        with verified_copy(spec.path, "reward", spec.options.get("allow_unverified", False)) as (source, version):
            model = AutoModelForSequenceClassification.from_pretrained(
                str(source), use_safetensors=True, trust_remote_code=False, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, local_files_only=True)
        return cls(model.to(device), tokenizer, version)

    def encode(self, items: Sequence[ScoreItem]) -> list[list[int]]:
        seqs = [scored_ids(self.tokenizer, messages, answer) for messages, answer in items]
        longest = max((len(s) for s in seqs), default=0)
        if longest > self.max_length:
            # A truncated item would get the score of another text (a decoder RM reads its last token).
            raise ContextLengthExceeded(f"the conversation and its answer are {longest} tokens; the reward model "
                                        f"reads at most {self.max_length}")
        return seqs

    @torch.inference_mode()
    def score_batch(self, items: Sequence[ScoreItem]) -> list[Score]:
        if not items:
            return []
        seqs = self.encode(items)
        values = score_sequences(self.model, seqs, self.tokenizer.pad_token_id).float().tolist()
        return [Score(value, len(s)) for value, s in zip(values, seqs, strict=True)]

    def close(self) -> None:
        """Drop the model so that its memory is freed (nothing scores after this); on a GPU, hand the freed
        blocks back to the device, so that a swap's new RM can use them."""
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
