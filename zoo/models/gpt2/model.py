"""GPT-2: a decoder-only Transformer with pre-norm blocks and tied input/output embeddings."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import nn

from zoo.errors import check_positive, check_probability
from zoo.models.hf_io import HFConvertible
from zoo.models.spec import Configurable
from zoo.nn import MLP, Attention, DecoderLM, DecoderStack, LearnedPositions, PreNormBlock

GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2": dict(embed_dim=768, num_heads=12, num_layers=12),  # 124M
    "gpt2-medium": dict(embed_dim=1024, num_heads=16, num_layers=24),  # 350M
    "gpt2-large": dict(embed_dim=1280, num_heads=20, num_layers=36),  # 774M
    "gpt2-xl": dict(embed_dim=1600, num_heads=25, num_layers=48),  # 1558M
    "gpt2-mini": dict(embed_dim=256, num_heads=8, num_layers=6),  # CPU-sized
    "gpt2-tiny": dict(embed_dim=128, num_heads=4, num_layers=4),  # nanoGPT's CPU shakespeare-char
}
"""Named sizes: ``(embed_dim, num_heads, num_layers)``. The first four are OpenAI's releases."""


class GPT2(Configurable, HFConvertible, DecoderLM):
    """GPT-2 language model: ids in, next-token logits out.

    The parts are GPT-2's (learned positions added to the token embeddings, pre-norm blocks of fused-QKV
    attention and a tanh-GELU MLP, LayerNorms with biases); everything else comes from `zoo.nn.DecoderLM`
    (forward, caches, hidden states). ``from_hf``/``to_hf`` convert ``GPT2LMHeadModel`` directories
    (`zoo.models.gpt2.convert`).

    Args:
        vocab_size: Number of token ids (50257 for OpenAI's byte-level BPE).
        max_seq_len: Number of learned positions (context length).
        embed_dim: Model width C.
        num_heads: Attention heads per layer.
        num_layers: Number of Transformer blocks.
        hidden_dim: MLP inner width; ``None`` means ``4 * embed_dim``.
        dropout: Dropout on embeddings, attention probabilities and residual branches.
        bias: Biases in linear layers and LayerNorms (OpenAI's checkpoints have them).
        layer_norm_eps: LayerNorm epsilon.
        tie_weights: Share the output projection with the token embedding.
    """

    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (PreNormBlock,)  # see zoo.strategies.FSDP
    state_dict_renames: ClassVar[dict[str, str]] = {  # checkpoints from before the stacks (zoo.checkpoint)
        "embeddings.tokens.": "tokens.",
        "embeddings.positions.": "absolute_positions.",
        "layers.": "decoder.layers.",
        "norm.": "decoder.norm.",
    }

    def __init__(
        self,
        *,
        vocab_size: int = 50257,
        max_seq_len: int = 1024,
        embed_dim: int = 768,
        num_heads: int = 12,
        num_layers: int = 12,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        layer_norm_eps: float = 1e-5,
        tie_weights: bool = True,
    ) -> None:
        check_positive("GPT2", vocab_size=vocab_size, embed_dim=embed_dim, num_heads=num_heads)
        check_positive("GPT2", num_layers=num_layers, hidden_dim=hidden_dim, max_seq_len=max_seq_len)
        check_probability("GPT2", dropout=dropout)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)

        def block() -> PreNormBlock:
            attn = Attention(
                qkv_proj=nn.Linear(embed_dim, 3 * embed_dim, bias=bias),
                out_proj=nn.Linear(embed_dim, embed_dim, bias=bias),
                num_heads=num_heads,
                head_dim=embed_dim // num_heads,
                causal=True,
                dropout=dropout,
            )
            mlp = MLP(
                embed_dim=embed_dim,
                hidden_dim=hidden_dim or 4 * embed_dim,
                activation=nn.GELU(approximate="tanh"),
                dropout=dropout,
                bias=bias,
            )
            return PreNormBlock(
                self_attn=attn, mlp=mlp, self_attn_norm=norm(), mlp_norm=norm(), dropout=dropout
            )

        super().__init__(
            tokens=nn.Embedding(vocab_size, embed_dim),
            absolute_positions=LearnedPositions(max_seq_len=max_seq_len, embed_dim=embed_dim),
            embed_dropout=dropout,
            decoder=DecoderStack(layers=[block() for _ in range(num_layers)], norm=norm()),
            lm_head=nn.Linear(embed_dim, vocab_size, bias=False),
            max_seq_len=max_seq_len,
            tie_weights=tie_weights,
        )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPT2:
        """Build a named size (see ``GPT2_SIZES``), e.g. ``GPT2.from_name("gpt2", vocab_size=8192)``."""
        if name not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {sorted(GPT2_SIZES)}")
        return cls(**{**GPT2_SIZES[name], **overrides})

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by
        ``1/sqrt(2 * num_layers)`` so the residual stream's variance does not grow with depth; drawn in
        module order (tokens, positions, blocks, output layer)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        residual_std = 0.02 / math.sqrt(2 * self.num_layers)
        for layer in self.layers:
            nn.init.normal_(layer.self_attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(layer.mlp.out_proj.weight, mean=0.0, std=residual_std)
