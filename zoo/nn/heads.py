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


def pool_packed(hidden: Tensor, document_ids: Tensor, spans: Tensor, how: str) -> Tensor:
    """One vector per sequence of packed rows: (R, W, C) -> (N, C), as `pool_first`, `pool_last` or
    `pool_mean` give for each sequence alone.

    Args:
        hidden: Hidden states of the packed rows.
        document_ids: (R, W) the sequence (0..N-1) at each position, -1 at padding.
        spans: (N, 3) row, first position and length of each sequence.
        how: ``"first"``, ``"last"`` or ``"mean"``.
    """
    rows, starts, lengths = spans.unbind(-1)  # (N,) each
    if how == "first":
        return hidden[rows, starts]
    if how == "last":
        return hidden[rows, starts + lengths - 1]
    if how != "mean":
        raise ValueError(f"unknown pooling {how!r}; choose first, last or mean")
    N, C = spans.shape[0], hidden.shape[-1]
    ids = document_ids.flatten().masked_fill(document_ids.flatten() < 0, N)  # padding sums into row N
    sums = hidden.new_zeros(N + 1, C).index_add_(0, ids, hidden.reshape(-1, C))[:N]  # (N, C)
    return sums / lengths.unsqueeze(-1).to(hidden.dtype)


def sequence_starts(spans: Tensor, num_rows: int, row_width: int) -> tuple[Tensor, Tensor]:
    """Where the sequences of packed rows begin, laid out for a last layer that computes a few rows only
    (``output_positions``): ``(positions (R, K), slot (N,))``, so that sequence ``n`` starts at
    ``positions[row_n, slot_n]``; K is the most sequences in a row, shorter rows repeat position 0.

    Args:
        spans: (N, 3) row, first position and length of each sequence (`zoo.data.collate.pack_batch`).
        num_rows: R.
        row_width: W, the positions per row.
    """
    rows, starts, _ = spans.unbind(-1)  # (N,) each
    counts = torch.bincount(rows, minlength=num_rows)  # (R,)
    first = torch.cumsum(counts, 0) - counts  # (R,): where each row's sequences begin in row order
    order = torch.argsort(rows * row_width + starts)  # (N,) sequences in row-major order
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(len(rows), device=rows.device) - first[rows[order]]
    positions = torch.zeros(num_rows, int(counts.max()), dtype=torch.long, device=rows.device)
    positions[rows, slot] = starts
    return positions, slot
