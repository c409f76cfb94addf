"""Token-id sequences of different lengths as one padded batch: ids, attention mask and positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False, width: int | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask (1 on tokens, 0 on padding), both (B, W); W is the longest sequence unless given.

    Right padding by default (training batches, reward scoring); `left=True` ends every row in the last column,
    where generation goes on.
    """
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)  # (B, W)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)  # (B, W)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that left padding does not shift: a row's first token is at 0 however much padding precedes it."""
    return (mask.cumsum(-1) - 1).clamp(min=0)  # (B, W)
