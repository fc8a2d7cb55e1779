"""Transitional: the attention and blocks of zoo's families before the stacks (removed with the move)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.attention import KVCache, build_attention_mask
from zoo.nn.mlp import MLP


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


class _Block(nn.Module):
    def __init__(
        self,
        *,
        self_attn: SelfAttention,
        mlp: MLP,
        self_attn_norm: nn.Module,
        mlp_norm: nn.Module,
        cross_attn: CrossAttention | None = None,
        cross_attn_norm: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (cross_attn is None) != (cross_attn_norm is None):
            raise ValueError("cross_attn and cross_attn_norm must be given together")
        self.self_attn = self_attn
        self.self_attn_norm = self_attn_norm
        self.cross_attn = cross_attn
        self.cross_attn_norm = cross_attn_norm
        self.mlp = mlp
        self.mlp_norm = mlp_norm
        self.dropout = nn.Dropout(dropout)  # on each attention sub-layer's output (the MLP has its own)


class PreNormBlock(_Block):
    """Pre-norm block: each sub-layer sees a normalised input, the residual stream is left raw.

    Args:
        self_attn: Self-attention sub-layer.
        mlp: Feed-forward sub-layer.
        self_attn_norm: Norm applied before self-attention.
        mlp_norm: Norm applied before the MLP.
        cross_attn: Optional cross-attention sub-layer (decoder blocks).
        cross_attn_norm: Norm applied before cross-attention.
        dropout: Residual dropout on attention outputs.
    """

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        causal: bool = False,
        kv_cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cross_kv_cache: KVCache | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); see `SelfAttention.forward` for the mask arguments."""
        h = self.self_attn(
            self.self_attn_norm(x), padding_mask=padding_mask, causal=causal, kv_cache=kv_cache
        )
        x = x + self.dropout(h)
        if self.cross_attn is not None:
            h = self.cross_attn(
                self.cross_attn_norm(x),
                memory,
                memory_mask=memory_mask,
                kv_cache=cross_kv_cache,
            )
            x = x + self.dropout(h)
        return x + self.mlp(self.mlp_norm(x))


class PostNormBlock(_Block):
    """Post-norm block: the norm follows each residual addition.

    Args:
        self_attn: Self-attention sub-layer.
        mlp: Feed-forward sub-layer.
        self_attn_norm: Norm applied after the self-attention residual.
        mlp_norm: Norm applied after the MLP residual.
        cross_attn: Optional cross-attention sub-layer (decoder blocks).
        cross_attn_norm: Norm applied after the cross-attention residual.
        dropout: Residual dropout on attention outputs.
    """

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        causal: bool = False,
        kv_cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cross_kv_cache: KVCache | None = None,
        query_index: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); see `SelfAttention.forward` for the mask arguments. With
        ``query_index`` (B, N) only those positions are computed and returned: (B, N, C)."""
        h = self.self_attn(
            x, padding_mask=padding_mask, causal=causal, kv_cache=kv_cache, query_index=query_index
        )
        if query_index is not None:
            x = x.gather(1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, N, C)
        x = self.self_attn_norm(x + self.dropout(h))
        if self.cross_attn is not None:
            h = self.cross_attn(x, memory, memory_mask=memory_mask, kv_cache=cross_kv_cache)
            x = self.cross_attn_norm(x + self.dropout(h))
        return self.mlp_norm(x + self.mlp(x))
