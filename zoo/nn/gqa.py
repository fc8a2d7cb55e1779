"""Attention assembled from injected parts: projections, a position encoding, grouped key/value heads.

`Attention` does self-attention (keys and values from the input) and cross-attention (from a ``memory``)
in one class. Its projections are whatever modules the caller passes, so an adapter (LoRA) or a
quantised layer arrives by injection; a relative position encoding (`zoo.nn.positions`) is applied to
queries and keys. Grouped-query attention (Ainslie et al. 2023) shares each key/value head among
``num_heads // num_kv_heads`` query heads; ``num_kv_heads == num_heads`` is plain multi-head attention
and ``num_kv_heads == 1`` multi-query attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import check_positive, check_probability
from zoo.nn.attention import KVCache, build_attention_mask
from zoo.nn.positions import Positions

# SDPA shares key/value heads itself from torch 2.5 on; before that the heads are repeated.
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads and injected projections.

    Args:
        q_proj: C -> nh·hs (queries).
        k_proj: Cm -> nkv·hs (keys; Cm = C for self-attention, the memory width for cross-attention).
        v_proj: Cm -> nkv·hs (values).
        out_proj: nh·hs -> C.
        num_heads: Query heads nh.
        num_kv_heads: Key/value heads nkv, dividing ``num_heads``; ``None`` means ``num_heads``.
        head_dim: Size of one head hs.
        positions: Relative position encoding (`RotaryPositions`, `ALiBiPositions`); ``None`` for none
            (absolute positions are added to the embeddings instead). Not applied to cross-attention.
        causal: Query ``i`` sees keys up to its own position only (self-attention in a decoder).
        dropout: Attention-probability dropout (training only).
    """

    def __init__(
        self,
        *,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        out_proj: nn.Module,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int,
        positions: Positions | None = None,
        causal: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        check_positive("Attention", num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
        check_probability("Attention", dropout=dropout)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.positions = positions
        self.causal = causal
        self.dropout = dropout

    def _split(self, x: Tensor, heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, hs)

    def _keys_values(self, source: Tensor, kv_cache: KVCache | None, reuse: bool) -> tuple[Tensor, Tensor]:
        if reuse and kv_cache is not None and kv_cache.seq_len > 0:  # cross-attention: memory cached once
            return kv_cache.k[:, :, : kv_cache.seq_len], kv_cache.v[:, :, : kv_cache.seq_len]
        k = self._split(self.k_proj(source), self.num_kv_heads)  # (B, nkv, S, hs)
        v = self._split(self.v_proj(source), self.num_kv_heads)  # (B, nkv, S, hs)
        return k, v

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Attend ``x`` (B, T, C) to itself, or to ``memory`` (B, S, Cm); returns (B, T, C).

        Args:
            x: Query sequence.
            memory: Keys/values source for cross-attention; ``None`` for self-attention.
            padding_mask: (B, Tk) with 1 at real keys; with a self-attention cache Tk covers cached plus
                new tokens.
            position_ids: (B, T) or (T,) positions of ``x`` for the position encoding; defaults to the
                positions after the cached ones.
            kv_cache: Self-attention: this call's keys/values are appended and all cached ones attended.
                Cross-attention: filled from ``memory`` on first use, then only read.
        """
        cross = memory is not None
        q = self._split(self.q_proj(x), self.num_heads)  # (B, nh, T, hs)
        k, v = self._keys_values(memory if cross else x, kv_cache, reuse=cross)  # (B, nkv, S, hs)
        if self.positions is not None and not cross:
            if position_ids is None:
                past = kv_cache.seq_len if kv_cache is not None else 0
                position_ids = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
            q, k = self.positions.apply(q, k, position_ids)
        if kv_cache is not None and not (cross and kv_cache.seq_len > 0):
            k, v = kv_cache.update(k, v)  # (B, nkv, Tk, hs)
        return self.out_proj(self._attend(q, k, v, padding_mask, cross=cross))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, padding_mask: Tensor | None, cross: bool) -> Tensor:
        B, _, Tq, _ = q.shape
        Tk = k.shape[2]
        causal = self.causal and not cross
        bias = self.positions.bias(Tq, Tk) if self.positions is not None and not cross else None
        mask, is_causal = None, False
        if padding_mask is not None or bias is not None or (causal and Tq != Tk and Tq > 1):
            mask = build_attention_mask(
                key_padding_mask=padding_mask, num_queries=Tq, num_keys=Tk, causal=causal, device=q.device
            )  # (B or 1, 1, Tq, Tk) bool, or None
            if bias is not None:
                bias = bias.to(q.dtype)  # (nh, Tq, Tk)
                mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))  # (B, nh, Tq, Tk)
        else:
            is_causal = causal and Tq > 1  # fast path: no explicit mask; one new token sees the whole cache
        extra = {}
        if self.num_kv_heads != self.num_heads:
            if _SDPA_GQA:
                extra["enable_gqa"] = True
            else:
                groups = self.num_heads // self.num_kv_heads
                k = k.repeat_interleave(groups, dim=1)  # (B, nh, Tk, hs)
                v = v.repeat_interleave(groups, dim=1)  # (B, nh, Tk, hs)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            **extra,
        )  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).reshape(B, Tq, self.num_heads * self.head_dim)  # (B, Tq, nh·hs)
        return y
