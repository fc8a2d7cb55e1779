"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

An encoder of self-attention blocks (a `zoo.nn.EncoderStack`) reads the source; a decoder of causal
self-attention plus cross-attention blocks (a `zoo.nn.DecoderStack`) writes the target. Norm placement
(pre or post), position embeddings (sinusoidal or learned) and embedding sharing are the caller's choice;
the output projection is the target embedding, transposed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from zoo.errors import check_positive, check_probability
from zoo.models.spec import Configurable
from zoo.nn import (
    MLP,
    Attention,
    DecoderStack,
    EncoderDecoderLM,
    EncoderStack,
    PostNormBlock,
    PreNormBlock,
)
from zoo.nn.embeddings import SinusoidalPositions

TRANSFORMER_SIZES: dict[str, dict[str, int]] = {
    "transformer-base": dict(
        embed_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, hidden_dim=2048
    ),  # 44M + 512 * vocab (shared, tied): 61M with 32k pieces
    "transformer-big": dict(
        embed_dim=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6, hidden_dim=4096
    ),  # 176M + 1024 * vocab: 209M with 32k pieces
    "transformer-small": dict(
        embed_dim=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3, hidden_dim=1024
    ),  # 5.5M + 256 * vocab: CPU-sized (Multi30k)
    "transformer-tiny": dict(
        embed_dim=64, num_heads=2, num_encoder_layers=2, num_decoder_layers=2, hidden_dim=256
    ),  # 0.23M + 64 * vocab: tests
}
"""Named sizes. ``transformer-base`` and ``transformer-big`` are the paper's (Table 3); the last two are
for CPUs."""


class InputEmbedding(nn.Module):
    """``dropout(tokens(ids) * scale + positions(position_ids))``.

    Args:
        tokens: Token embedding table (may be shared between encoder, decoder and output projection).
        positions: Position table called on position ids: ``nn.Embedding`` or `SinusoidalPositions`.
        scale: Multiplier of the token embeddings (``sqrt(embed_dim)`` in the paper).
        dropout: Dropout on the sum.
    """

    def __init__(self, *, tokens: nn.Embedding, positions: nn.Module, scale: float, dropout: float) -> None:
        super().__init__()
        self.tokens = tokens
        self.positions = positions
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, *, position_ids: Tensor) -> Tensor:
        """(B, T) ids at positions ``position_ids`` (T,) -> (B, T, C)."""
        return self.dropout(self.tokens(ids) * self.scale + self.positions(position_ids))


class Transformer(Configurable, EncoderDecoderLM):
    """Encoder-decoder Transformer: source ids and target prefix in, next-target-token logits out.

    Everything but the choice of parts and their initialisation comes from `zoo.nn.EncoderDecoderLM`
    (forward, encode, decode, caches, FLOPs).

    Args:
        vocab_size: Number of token ids (the joint source/target vocabulary; the CLI links it from the data).
        max_seq_len: Positions of the encoder and of the decoder (longest source, longest target prefix).
        embed_dim: Model width C.
        num_heads: Attention heads per layer.
        num_encoder_layers: Encoder blocks.
        num_decoder_layers: Decoder blocks.
        hidden_dim: MLP inner width; ``None`` means ``4 * embed_dim``.
        dropout: Dropout on embeddings, residual branches and the MLP output.
        attention_dropout: Dropout on attention probabilities.
        norm: ``"pre"`` (a norm before each sub-layer and after the last block; trains without a long
            warm-up) or ``"post"`` (the paper's: a norm after each residual addition).
        positions: ``"sinusoidal"`` (the paper's, fixed) or ``"learned"``.
        share_embeddings: One token table for source and target (needs a joint vocabulary).
        tie_weights: Use the target token table as the output projection.
        bias: Biases in linear layers and LayerNorms.
        layer_norm_eps: LayerNorm epsilon.
    """

    # encoder and decoder blocks; `norm` picks which class is used (see zoo.strategies.FSDP)
    fsdp_units: ClassVar[tuple[type[nn.Module], ...]] = (PreNormBlock, PostNormBlock)
    state_dict_renames: ClassVar[dict[str, str]] = {  # checkpoints from before the stacks (zoo.checkpoint)
        "encoder_layers.": "encoder.layers.",
        "decoder_layers.": "decoder.layers.",
        "encoder_norm.": "encoder.norm.",
        "decoder_norm.": "decoder.norm.",
    }
    embedding_names: ClassVar[tuple[str, str]] = ("src_embed", "tgt_embed")

    def __init__(
        self,
        *,
        vocab_size: int = 32000,
        max_seq_len: int = 256,
        embed_dim: int = 512,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        norm: Literal["pre", "post"] = "pre",
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        share_embeddings: bool = True,
        tie_weights: bool = True,
        bias: bool = True,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        if norm not in ("pre", "post") or positions not in ("sinusoidal", "learned"):
            raise ValueError(
                f"norm must be 'pre' or 'post' and positions 'sinusoidal' or 'learned', got "
                f"{norm!r}, {positions!r}"
            )
        check_positive("Transformer", vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim)
        check_positive("Transformer", num_heads=num_heads, hidden_dim=hidden_dim)
        check_positive(
            "Transformer", num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers
        )
        check_probability("Transformer", dropout=dropout, attention_dropout=attention_dropout)
        if embed_dim % num_heads:
            raise ValueError(f"Transformer: embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        layer = dict(
            norm=norm,
            embed_dim=embed_dim,
            num_heads=num_heads,
            hidden_dim=hidden_dim or 4 * embed_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            bias=bias,
            eps=layer_norm_eps,
        )
        # built in the order of checkpoints from before the skeleton, so a seed draws the same weights
        src_tokens = nn.Embedding(vocab_size, embed_dim)
        tgt_tokens = src_tokens if share_embeddings else nn.Embedding(vocab_size, embed_dim)
        embedding = dict(positions=positions, max_seq_len=max_seq_len, dropout=dropout)
        src_embed = _embedding(src_tokens, **embedding)
        tgt_embed = _embedding(tgt_tokens, **embedding)
        # pre-norm leaves the residual stream unnormalised: one norm after the last block of each stack
        final_norm = lambda: nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias) if norm == "pre" else None
        encoder = EncoderStack(
            layers=[block(cross=False, **layer) for _ in range(num_encoder_layers)], norm=final_norm()
        )
        decoder = DecoderStack(
            layers=[block(cross=True, **layer) for _ in range(num_decoder_layers)], norm=final_norm()
        )
        lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_weights:
            lm_head.weight = tgt_tokens.weight
        super().__init__(
            source_embedding=src_embed,
            encoder=encoder,
            target_embedding=tgt_embed,
            decoder=decoder,
            lm_head=lm_head,
            max_seq_len=max_seq_len,
        )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Transformer:
        """Build a named size (see ``TRANSFORMER_SIZES``), e.g. ``Transformer.from_name("transformer-base",
        vocab_size=37000)``."""
        if name not in TRANSFORMER_SIZES:
            raise ValueError(f"unknown Transformer size {name!r}; choose one of {sorted(TRANSFORMER_SIZES)}")
        return cls(**{**TRANSFORMER_SIZES[name], **overrides})

    def reset_parameters(self) -> None:
        """fairseq's initialisation: Xavier-uniform linear layers, zero biases, token embeddings
        N(0, C^-1/2) (scaled by sqrt(C) on input, so unit-variance like the sinusoids). Drawn in module
        order: embeddings, encoder blocks, decoder blocks, output layer (each shared table once)."""
        for module in self.modules():
            if module is self.lm_head:  # tied or not: drawn like the embeddings
                nn.init.normal_(module.weight, mean=0.0, std=self.embed_dim**-0.5)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.embed_dim**-0.5)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()


def _embedding(tokens: nn.Embedding, *, positions: str, max_seq_len: int, dropout: float) -> InputEmbedding:
    """Token embedding scaled by sqrt(C) plus sinusoidal or learned positions."""
    C = tokens.embedding_dim
    table = (
        SinusoidalPositions(max_seq_len=max_seq_len, embed_dim=C)
        if positions == "sinusoidal"
        else nn.Embedding(max_seq_len, C)
    )
    return InputEmbedding(tokens=tokens, positions=table, scale=math.sqrt(C), dropout=dropout)


def block(
    *,
    cross: bool,
    norm: Literal["pre", "post"],
    embed_dim: int,
    num_heads: int,
    hidden_dim: int,
    dropout: float,
    attention_dropout: float,
    bias: bool,
    eps: float,
) -> PreNormBlock | PostNormBlock:
    """An encoder block, or with ``cross`` a decoder block (causal self-attention, cross-attention, ReLU
    MLP). Parts are built in the order of checkpoints from before the stacks (each attention's
    ``out_proj`` first), so a seed draws the same weights."""
    C = embed_dim
    linear = lambda n_in, n_out: nn.Linear(n_in, n_out, bias=bias)
    layer_norm = lambda: nn.LayerNorm(C, eps=eps, bias=bias)
    heads = dict(num_heads=num_heads, head_dim=C // num_heads, dropout=attention_dropout)

    def self_attention() -> Attention:
        out_proj = linear(C, C)
        return Attention(qkv_proj=linear(C, 3 * C), out_proj=out_proj, causal=cross, **heads)

    def cross_attention() -> Attention:
        out_proj = linear(C, C)
        return Attention(q_proj=linear(C, C), kv_proj=linear(C, 2 * C), out_proj=out_proj, **heads)

    return (PreNormBlock if norm == "pre" else PostNormBlock)(
        self_attn=self_attention(),
        mlp=MLP(embed_dim=C, hidden_dim=hidden_dim, activation=nn.ReLU(), dropout=dropout, bias=bias),
        self_attn_norm=layer_norm(),
        mlp_norm=layer_norm(),
        cross_attn=cross_attention() if cross else None,
        cross_attn_norm=layer_norm() if cross else None,
        dropout=dropout,
    )
