"""Position encodings, in two kinds.

*Absolute* positions are added to the token embeddings before the first layer: `LearnedPositions` and
`SinusoidalPositions` (from `zoo.nn.embeddings`), both called like an ``nn.Embedding`` on position ids.

*Relative* positions act inside attention through the `Positions` interface that `zoo.nn.Attention`
calls: ``apply(q, k, position_ids)`` rotates queries and keys (`RotaryPositions`), ``bias(q_len, k_len)``
returns an additive score bias (`ALiBiPositions`). The base class does neither, so a subclass overrides
only what it uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.errors import check_positive
from zoo.nn.embeddings import SinusoidalPositions

__all__ = ["ALiBiPositions", "LearnedPositions", "Positions", "RotaryPositions", "SinusoidalPositions"]


class LearnedPositions(nn.Embedding):
    """Learned absolute positions (GPT-2, BERT): an ``nn.Embedding`` of ``max_seq_len`` rows.

    Args:
        max_seq_len: Number of positions.
        embed_dim: Embedding width C.
    """

    def __init__(self, *, max_seq_len: int, embed_dim: int) -> None:
        check_positive("LearnedPositions", max_seq_len=max_seq_len, embed_dim=embed_dim)
        super().__init__(max_seq_len, embed_dim)


class Positions(nn.Module):
    """Relative position encoding applied inside attention; this base class changes nothing."""

    def apply(self, q: Tensor, k: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encode positions into queries (B, nh, T, hs) and keys (B, nkv, T, hs) of the same tokens.

        ``position_ids`` is (B, T) or (T,). Keys are encoded before they enter a KV cache.
        """
        return q, k

    def bias(self, q_len: int, k_len: int) -> Tensor | None:
        """Additive attention-score bias broadcastable to (B, nh, Tq, Tk), or ``None``. Queries are the
        last ``q_len`` of the ``k_len`` keys (the KV-cache layout)."""
        return None


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., hs)


class RotaryPositions(Positions):
    """Rotary position embedding (RoFormer, Su et al. 2021) in Hugging Face Llama's layout.

    Channel ``i`` and ``i + hs/2`` of each head are rotated by angle ``p * theta^(-2i/hs)`` at position
    ``p`` ("rotate_half", not interleaved pairs), so ``q·k`` depends only on the offset between the two
    positions. Cosines and sines are cached for ``max_seq_len`` positions (not saved in the state dict).

    Args:
        head_dim: Size of one head hs (even).
        max_seq_len: Positions cached; every position id must be below it.
        theta: Base of the frequencies (``rope_theta``; 10000 in Llama 1/2, 500000 in Llama 3).
    """

    def __init__(self, *, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        check_positive("RotaryPositions", head_dim=head_dim, max_seq_len=max_seq_len)
        if not theta > 1.0:
            raise ValueError(f"RotaryPositions: theta must be greater than 1, got {theta!r}")
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
        # the same float32 arithmetic as transformers, so the tables match it bit for bit
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)
        cos, sin = self._tables(torch.arange(max_seq_len))
        self.register_buffer("cos", cos, persistent=False)  # (T, hs)
        self.register_buffer("sin", sin, persistent=False)  # (T, hs)

    def _tables(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)  # (..., hs/2)
        angle = torch.cat((freqs, freqs), dim=-1)  # (..., hs)
        return angle.cos(), angle.sin()

    def apply(self, q: Tensor, k: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.cos[position_ids], self.sin[position_ids]  # (B, T, hs) or (T, hs)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs): broadcast over heads
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): the geometric sequence ``2^(-8/n), 2^(-16/n), ...`` for
    ``n = num_heads`` a power of two; otherwise those of the largest power of two below, then every
    other slope of twice that power (the authors' reference code)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    check_positive("alibi_slopes", num_heads=num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes)


class ALiBiPositions(Positions):
    """Attention with linear biases (ALiBi, Press et al. 2022): no position embedding at all; head ``h``
    adds ``-slope_h * |i - j|`` to the score of query ``i`` on key ``j`` (in causal attention, the paper's
    setting, only ``j <= i`` is seen).

    Args:
        num_heads: Query heads nh (any number; see `alibi_slopes`).
    """

    def __init__(self, *, num_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)  # (nh,)

    def bias(self, q_len: int, k_len: int) -> Tensor:
        device = self.slopes.device
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (Tq, 1)
        distance = (q_pos - torch.arange(k_len, device=device)[None, :]).abs().float()  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance  # (nh, Tq, Tk)
