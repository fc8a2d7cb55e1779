"""Transformer blocks. The caller chooses the norm placement by choosing the class.

``PreNormBlock`` (GPT-2, Llama, modern decoders): ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.
``PostNormBlock`` (BERT, the original Transformer): ``norm(x + attn(x))``, then ``norm(x + mlp(x))``.

Both take an optional cross-attention sub-layer (with its own norm) between self-attention and the MLP,
which turns an encoder block into a decoder block for sequence-to-sequence models. The attention modules
carry their own causality and position encoding (`zoo.nn.Attention`); the MLP is any (B, T, C) -> (B, T, C)
module (`zoo.nn.MLP`, `zoo.nn.GatedMLP`).
"""

from __future__ import annotations

from torch import Tensor, nn

from zoo.nn.attention import Attention, KVCache


class _Block(nn.Module):
    def __init__(
        self,
        *,
        self_attn: Attention,
        mlp: nn.Module,
        self_attn_norm: nn.Module,
        mlp_norm: nn.Module,
        cross_attn: Attention | None = None,
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
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cross_kv_cache: KVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); see `zoo.nn.Attention.forward` for the arguments (``memory_mask`` and
        ``cross_kv_cache`` are cross-attention's ``padding_mask`` and ``kv_cache``; ``document_ids`` is
        self-attention's)."""
        h = self.self_attn(
            self.self_attn_norm(x),
            padding_mask=padding_mask,
            position_ids=position_ids,
            kv_cache=kv_cache,
            document_ids=document_ids,
        )
        x = x + self.dropout(h)
        if self.cross_attn is not None:
            h = self.cross_attn(
                self.cross_attn_norm(x), memory=memory, padding_mask=memory_mask, kv_cache=cross_kv_cache
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
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cross_kv_cache: KVCache | None = None,
        query_index: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C), as `PreNormBlock`. With ``query_index`` (B, N) only those positions are
        computed and returned: (B, N, C)."""
        h = self.self_attn(
            x,
            padding_mask=padding_mask,
            position_ids=position_ids,
            kv_cache=kv_cache,
            query_index=query_index,
            document_ids=document_ids,
        )
        if query_index is not None:
            x = x.gather(1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, N, C)
        x = self.self_attn_norm(x + self.dropout(h))
        if self.cross_attn is not None:
            h = self.cross_attn(x, memory=memory, padding_mask=memory_mask, kv_cache=cross_kv_cache)
            x = self.cross_attn_norm(x + self.dropout(h))
        return self.mlp_norm(x + self.mlp(x))
