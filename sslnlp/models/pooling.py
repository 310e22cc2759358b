"""One vector per sequence from a model's hidden states: what probes, kNN and contrastive objectives compare."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [B, L, H], attention_mask [B, L] (right padding) -> [B, H]."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "last":
        last = attention_mask.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; choose one of first, mean, last")
