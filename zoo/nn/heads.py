"""Pooling of hidden states into one vector per sequence, for heads that classify whole sequences."""

from __future__ import annotations

import torch
from torch import Tensor


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of each row's last real token, under right *or* left padding.

    Args:
        attention_mask: (B, T), 1 at real tokens and 0 at padding.

    Returns:
        (B,) long indices; a row without any real token gives ``T - 1``.
    """
    T = attention_mask.shape[1]
    flipped = attention_mask.flip(1).to(torch.int8)  # (B, T), the last real token comes first
    return (T - 1) - flipped.argmax(dim=1)


def pool_first(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Hidden state at position 0 ([CLS] in BERT's layout): (B, T, C) -> (B, C).

    Assumes right padding (position 0 is a real token), which BERT-style collators produce.
    """
    return hidden[:, 0]


def pool_last(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Hidden state at each row's last real token (what a causal model has seen everything at):
    (B, T, C) -> (B, C). Right and left padding both work."""
    if attention_mask is None:
        return hidden[:, -1]
    index = last_token_index(attention_mask)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def pool_mean(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean of the hidden states over real tokens (sentence-transformers' pooling): (B, T, C) -> (B, C)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
