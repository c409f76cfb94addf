"""Store a checkpoint's weights in a narrower dtype than they compute in, and measure what that changes.

The embedded default checkpoints ship inside the repository, so their size matters: float16 storage halves it.
`config.json` keeps the compute dtype (float32), so every loader (transformers, vLLM) upcasts on load and the
served model is the stored one, exactly. What rounding to float16 changed is measured once, at conversion, on
fixed token sequences and recorded in the manifest's figures (`storage`): the largest per-token KL between the
float32 and the stored policy, or the largest reward difference of the reward model. For the shipped default
checkpoints these are at most 1e-5 (KL per token) and 7e-4 (reward): far below what any reported figure resolves.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from models.checkpoint import MANIFEST, Manifest, verify, write_checkpoint

StorageDtype = Literal["float32", "float16", "bfloat16"]
_PROBE_SEQUENCES = 16
_PROBE_LENGTH = 96


def _load(path: Path, kind: str) -> PreTrainedModel:
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    return cls.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
                               local_files_only=True).eval()


def _probe(model: PreTrainedModel) -> torch.Tensor:
    """Fixed pseudo-random token sequences (seeded): the same probe for the original and the stored weights."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return torch.randint(0, vocab, (_PROBE_SEQUENCES, _PROBE_LENGTH), generator=generator)


@torch.no_grad()
def storage_change(original: PreTrainedModel, stored: PreTrainedModel, kind: str) -> dict[str, float]:
    """What storing changed, on the probe: max per-token KL(original ‖ stored) for a policy, max |Δreward| for an RM."""
    ids = _probe(original)
    a, b = original(ids).logits.float(), stored(ids).logits.float()
    if kind == "policy":
        log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        return {"max_token_kl": float(kl.max()), "mean_token_kl": float(kl.mean())}
    return {"max_reward_diff": float((a - b).abs().max())}


def store_weights_as(path: Path, dtype: StorageDtype, parent: str | None = None) -> Manifest:
    """Rewrite the checkpoint at `path` with its floating weights stored as `dtype` (a new version).

    The manifest keeps the method, hyper-parameters and figures, records `storage_dtype` among the
    hyper-parameters and what the rounding changed among the figures; `parent` replaces the recorded parent
    version (when the parent was itself re-stored). Upcasting a float16 or bfloat16 value to float32 is exact,
    so the model measured here, with its weights rounded in memory, is the one that loads from the new files.
    """
    path = Path(path)
    manifest = verify(path)
    target = getattr(torch, dtype)
    original, stored = _load(path, manifest.kind), _load(path, manifest.kind)
    with torch.no_grad():
        for weight in stored.state_dict().values():
            if weight.is_floating_point():
                weight.copy_(weight.to(target))
    change = storage_change(original, stored, manifest.kind)

    def save(tmp: Path) -> None:
        for file in path.iterdir():
            if file.name == MANIFEST:
                continue
            if file.suffix == ".safetensors":
                tensors = load_file(str(file))
                save_file({k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()},
                          str(tmp / file.name), metadata={"format": "pt"})
            else:
                shutil.copy2(file, tmp / file.name)

    return write_checkpoint(
        path, save, kind=manifest.kind, method=manifest.method,
        parent=parent if parent is not None else manifest.parent,
        hyperparameters=manifest.hyperparameters | {"storage_dtype": dtype},
        figures=manifest.figures | {"storage": {"dtype": dtype, **change}})
