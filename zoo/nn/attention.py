"""Multi-head attention on ``torch.nn.functional.scaled_dot_product_attention``.

Two classes share one core: `SelfAttention` projects queries, keys and values with one fused
linear layer (one matmul instead of three), `CrossAttention` projects queries from the decoder
stream and keys/values from an encoder memory. Both accept a `KVCache` for incremental decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache(nn.Module):
    """Pre-allocated key/value cache for one attention layer.

    Args:
        batch_size: Number of sequences decoded together.
        num_heads: Attention heads of the layer.
        head_dim: Size of one head.
        max_seq_len: Longest sequence (prompt plus generated tokens) the cache can hold.
        dtype: Storage dtype (match the model's compute dtype).
        device: Storage device.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.seq_len = 0

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        self.seq_len = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``/``v`` of shape (B, nh, T, hs); return everything cached so far."""
        start, end = self.seq_len, self.seq_len + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache holds {self.max_seq_len} positions; cannot append up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.seq_len = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` (N,), in that order (beam search: each beam's parent row)."""
        self.k = self.k.index_select(0, index)  # (N, nh, T, hs)
        self.v = self.v.index_select(0, index)  # (N, nh, T, hs)


def build_attention_mask(
    *,
    key_padding_mask: Tensor | None,
    num_queries: int,
    num_keys: int,
    causal: bool,
    device: torch.device,
) -> Tensor | None:
    """Boolean mask broadcastable to (B, nh, Tq, Tk); ``True`` means "may attend".

    Queries are the last ``num_queries`` positions of the ``num_keys`` keys (the KV-cache layout), so
    the causal diagonal is offset by ``num_keys - num_queries``. Returns ``None`` when no masking is
    needed so SDPA can pick its fastest kernel.

    Args:
        key_padding_mask: (B, Tk), ``True``/1 at real tokens, ``False``/0 at padding, or ``None``.
        num_queries: Tq.
        num_keys: Tk.
        causal: Whether query ``i`` may only see keys up to its own position.
        device: Device for the mask.
    """
    mask = None
    if causal:
        offset = num_keys - num_queries
        q_pos = torch.arange(num_queries, device=device).unsqueeze(1) + offset  # (Tq, 1)
        mask = q_pos >= torch.arange(num_keys, device=device).unsqueeze(0)  # (Tq, Tk)
        mask = mask[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :].bool()  # (B, 1, 1, Tk)
        mask = keep if mask is None else mask & keep
        # A query that sees no key at all (a left-padding position) would give NaN; let it see
        # every key instead. Its output is padding and is never read.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


class _Attention(nn.Module):
    """Shared head split, SDPA call and output projection."""

    def __init__(self, *, embed_dim: int, num_heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, Tq, hs)
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.embed_dim)  # (B, Tq, C)
        return self.out_proj(y)


class SelfAttention(_Attention):
    """Multi-head self-attention with a fused QKV projection.

    Args:
        embed_dim: Model width C.
        num_heads: Number of heads; must divide ``embed_dim``.
        dropout: Attention-probability dropout (training only).
        bias: Whether the projections have biases.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, bias=bias)
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        causal: bool = False,
        kv_cache: KVCache | None = None,
        query_index: Tensor | None = None,
    ) -> Tensor:
        """Attend ``x`` (B, T, C) to itself; returns (B, T, C), or (B, N, C) with ``query_index``.

        Args:
            x: Input sequence.
            padding_mask: (B, Tk) with 1 at real tokens; with a cache, Tk covers cached plus new tokens.
            causal: Apply the causal mask.
            kv_cache: Cache to append this call's keys/values to and attend over.
            query_index: (B, N) positions whose outputs are wanted: only their queries are computed,
                keys and values still cover every position (a last layer read at a few positions).
        """
        C = self.embed_dim
        if query_index is None:
            q, k, v = self.qkv_proj(x).split(C, dim=2)
        else:
            if kv_cache is not None or causal:
                raise ValueError("query_index is for bidirectional attention without a KV cache")
            w, b = self.qkv_proj.weight, self.qkv_proj.bias
            rows = x.gather(1, query_index.unsqueeze(-1).expand(-1, -1, C))  # (B, N, C)
            q = F.linear(rows, w[:C], None if b is None else b[:C])  # (B, N, C)
            k, v = F.linear(x, w[C:], None if b is None else b[C:]).split(C, dim=2)  # (B, T, C) each
        q, k, v = self._split(q), self._split(k), self._split(v)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, nh, Tk, hs)
        Tq, Tk = q.shape[2], k.shape[2]
        if padding_mask is None and (not causal or Tq == Tk):
            return self._attend(q, k, v, None, is_causal=causal)  # fast path: no explicit mask
        if padding_mask is None and Tq == 1:
            return self._attend(q, k, v, None, is_causal=False)  # one new token sees the whole cache
        mask = build_attention_mask(
            key_padding_mask=padding_mask, num_queries=Tq, num_keys=Tk, causal=causal, device=x.device
        )
        return self._attend(q, k, v, mask, is_causal=False)


class CrossAttention(_Attention):
    """Multi-head attention from a query stream onto a memory (encoder output).

    The memory's keys and values depend only on the source, so with a ``kv_cache`` they are computed
    on the first call and reused for every later decoding step.

    Args:
        embed_dim: Width of the query stream C.
        num_heads: Number of heads; must divide ``embed_dim``.
        memory_dim: Width of the memory (defaults to ``embed_dim``).
        dropout: Attention-probability dropout (training only).
        bias: Whether the projections have biases.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        memory_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.kv_proj = nn.Linear(memory_dim or embed_dim, 2 * embed_dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        memory_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x`` (B, T, C) to ``memory`` (B, S, Cm); returns (B, T, C).

        Args:
            x: Query sequence.
            memory: Encoder output.
            memory_mask: (B, S) with 1 at real source tokens.
            kv_cache: Filled with the memory's keys/values on first use, then only read.
        """
        q = self._split(self.q_proj(x))  # (B, nh, T, hs)
        if kv_cache is not None and kv_cache.seq_len > 0:
            k, v = kv_cache.k[:, :, : kv_cache.seq_len], kv_cache.v[:, :, : kv_cache.seq_len]
        else:
            k, v = self.kv_proj(memory).split(self.embed_dim, dim=2)
            k, v = self._split(k), self._split(v)  # (B, nh, S, hs)
            if kv_cache is not None:
                k, v = kv_cache.update(k, v)
        mask = None
        if memory_mask is not None:
            mask = build_attention_mask(
                key_padding_mask=memory_mask,
                num_queries=q.shape[2],
                num_keys=k.shape[2],
                causal=False,
                device=x.device,
            )
        return self._attend(q, k, v, mask, is_causal=False)
