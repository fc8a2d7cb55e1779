"""Input embeddings: tokens plus learned absolute positions, optionally segments, norm and dropout."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenEmbedding(nn.Module):
    """Sum of token, learned position and (optional) segment embeddings, then norm and dropout.

    GPT-2 uses tokens + positions + dropout; BERT adds segments (token types) and a LayerNorm.

    Args:
        vocab_size: Number of token ids.
        embed_dim: Embedding width C.
        max_seq_len: Number of learned positions.
        num_segments: Number of segment (token type) ids; 0 disables segment embeddings.
        norm: Optional norm applied to the sum (BERT: ``nn.LayerNorm``).
        dropout: Dropout on the output.
        padding_idx: Token id whose embedding is not trained (``None`` for none).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embed_dim: int,
        max_seq_len: int,
        num_segments: int = 0,
        norm: nn.Module | None = None,
        dropout: float = 0.0,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.positions = nn.Embedding(max_seq_len, embed_dim)
        self.segments = nn.Embedding(num_segments, embed_dim) if num_segments else None
        self.norm = norm if norm is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    @property
    def max_seq_len(self) -> int:
        return self.positions.num_embeddings

    def forward(
        self, input_ids: Tensor, *, position_ids: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """(B, T) ids -> (B, T, C).

        Args:
            input_ids: Token ids.
            position_ids: (B, T) or (T,) positions; defaults to ``0..T-1``.
            token_type_ids: (B, T) segment ids; defaults to zeros when segments are enabled.
        """
        T = input_ids.shape[1]
        if position_ids is None:
            if T > self.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds the model's max_seq_len={self.max_seq_len}")
            position_ids = torch.arange(T, device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(position_ids)
        if self.segments is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.segments(token_type_ids)
        return self.dropout(self.norm(x))


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine position embeddings ("Attention Is All You Need", section 3.5).

    ``PE[p, 2i] = sin(p / 10000^(2i/C))`` and ``PE[p, 2i+1] = cos(p / 10000^(2i/C))``. Called like an
    ``nn.Embedding`` on position ids; nothing is trained and nothing is saved in the state dict.

    Args:
        max_seq_len: Number of positions.
        embed_dim: Embedding width C (even).
    """

    def __init__(self, *, max_seq_len: int, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"sinusoidal positions need an even embed_dim, got {embed_dim}")
        position = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1)  # (T, 1)
        inv_freq = 10000.0 ** (-torch.arange(0, embed_dim, 2, dtype=torch.float64) / embed_dim)  # (C/2,)
        angle = position * inv_freq  # (T, C/2)
        table = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)  # (T, C): sin, cos interleaved
        self.register_buffer("table", table.float(), persistent=False)

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    def forward(self, position_ids: Tensor) -> Tensor:
        """Position ids of any shape -> embeddings of that shape plus (C,)."""
        return self.table[position_ids]
