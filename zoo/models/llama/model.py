"""Llama: a decoder-only Transformer of RMSNorm, rotary grouped-query attention and a SwiGLU MLP."""

from __future__ import annotations

import math
import os
from typing import ClassVar

from torch import nn

from zoo.errors import check_positive, check_probability
from zoo.models.hf_io import HFConvertible
from zoo.models.spec import Configurable
from zoo.nn import Attention, DecoderLM, DecoderStack, GatedMLP, PreNormBlock, RMSNorm, RotaryPositions


class Llama(Configurable, HFConvertible, DecoderLM):
    """Llama-style language model (Touvron et al. 2023): ids in, next-token logits out.

    Everything but the choice of parts comes from `zoo.nn.DecoderLM` (forward, caches, initialisation);
    ``from_hf``/``to_hf`` convert ``LlamaForCausalLM`` directories (`zoo.models.llama.convert`);
    ``from_gguf`` reads llama.cpp's GGUF files (`zoo.models.llama.gguf`).

    Args:
        vocab_size: Number of token ids.
        max_seq_len: Context length (rotary tables are cached for it).
        embed_dim: Model width C.
        num_heads: Query heads per layer.
        num_kv_heads: Key/value heads (grouped-query attention), dividing ``num_heads``; ``None``: all.
        num_layers: Number of blocks.
        hidden_dim: SwiGLU inner width; ``None`` means 8·C/3 rounded up to a multiple of 64.
        rope_theta: Base of the rotary frequencies.
        norm_eps: RMSNorm epsilon.
        tie_weights: Share the output projection with the token embedding.
        dropout: Dropout on attention probabilities and residual branches.
        positions: The relative position encoding every attention layer shares, any module with the
            `zoo.nn.Positions` interface (``apply(q, k, position_ids)``, ``bias(q_len, k_len)``), e.g.
            `zoo.nn.ALiBiPositions` or a user's own (in YAML by ``class_path``); ``None``: rotary,
            ``RotaryPositions(head_dim=embed_dim // num_heads, max_seq_len=max_seq_len, theta=rope_theta)``.
            ``zoo.nn.Positions`` (the base class) encodes nothing in attention.
        absolute_positions: An absolute position encoding added to the token embeddings (see
            `zoo.nn.DecoderLM`), e.g. `zoo.nn.LearnedPositions` or `zoo.nn.SinusoidalPositions`, usually
            with ``positions`` set to ``zoo.nn.Positions``; ``None`` (the default): none, as in Llama.
    """

    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (PreNormBlock,)  # see zoo.strategies.FSDP

    def __init__(
        self,
        *,
        vocab_size: int = 32000,
        max_seq_len: int = 2048,
        embed_dim: int = 512,
        num_heads: int = 8,
        num_kv_heads: int | None = None,
        num_layers: int = 8,
        hidden_dim: int | None = None,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        tie_weights: bool = False,
        dropout: float = 0.0,
        positions: nn.Module | None = None,
        absolute_positions: nn.Module | None = None,
    ) -> None:
        check_positive("Llama", vocab_size=vocab_size, embed_dim=embed_dim, num_heads=num_heads)
        check_positive("Llama", num_layers=num_layers, hidden_dim=hidden_dim, max_seq_len=max_seq_len)
        check_probability("Llama", dropout=dropout)
        if embed_dim % num_heads:
            raise ValueError(f"Llama: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        hidden_dim = hidden_dim or 64 * math.ceil(8 * embed_dim / 3 / 64)  # Llama's 2/3 of 4·C, rounded up
        head_dim, kv_heads = embed_dim // num_heads, num_kv_heads or num_heads
        if positions is None:
            positions = RotaryPositions(head_dim=head_dim, max_seq_len=max_seq_len, theta=rope_theta)

        def linear(n_in: int, n_out: int) -> nn.Linear:
            return nn.Linear(n_in, n_out, bias=False)

        def block() -> PreNormBlock:
            attn = Attention(
                q_proj=linear(embed_dim, num_heads * head_dim),
                k_proj=linear(embed_dim, kv_heads * head_dim),
                v_proj=linear(embed_dim, kv_heads * head_dim),
                out_proj=linear(num_heads * head_dim, embed_dim),
                num_heads=num_heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                positions=positions,  # one module shared by every layer: e.g. rotary tables exist once
                causal=True,
                dropout=dropout,
            )
            return PreNormBlock(
                self_attn=attn,
                mlp=GatedMLP(
                    embed_dim=embed_dim, hidden_dim=hidden_dim, activation=nn.SiLU(), dropout=dropout
                ),
                self_attn_norm=RMSNorm(embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(embed_dim, eps=norm_eps),
                dropout=dropout,
            )

        super().__init__(
            tokens=nn.Embedding(vocab_size, embed_dim),
            decoder=DecoderStack(
                layers=[block() for _ in range(num_layers)], norm=RMSNorm(embed_dim, eps=norm_eps)
            ),
            lm_head=linear(embed_dim, vocab_size),
            max_seq_len=max_seq_len,
            tie_weights=tie_weights,
            absolute_positions=absolute_positions,
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Llama:
        """A Llama from a ``.gguf`` file or ``python:<package>``, in fp32 (`zoo.models.llama.gguf`)."""
        from zoo.models.llama.gguf import load_gguf  # here, so the reader depends on the model, not back

        return load_gguf(cls, path)
