"""GPT-2: a decoder-only Transformer with pre-norm blocks and tied input/output embeddings."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from zoo.models.spec import Configurable
from zoo.nn import MLP, KVCache, TokenEmbedding
from zoo.nn._legacy import PreNormBlock, SelfAttention

GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2": dict(embed_dim=768, num_heads=12, num_layers=12),  # 124M
    "gpt2-medium": dict(embed_dim=1024, num_heads=16, num_layers=24),  # 350M
    "gpt2-large": dict(embed_dim=1280, num_heads=20, num_layers=36),  # 774M
    "gpt2-xl": dict(embed_dim=1600, num_heads=25, num_layers=48),  # 1558M
    "gpt2-mini": dict(embed_dim=256, num_heads=8, num_layers=6),  # CPU-sized
    "gpt2-tiny": dict(embed_dim=128, num_heads=4, num_layers=4),  # nanoGPT's CPU shakespeare-char
}
"""Named sizes: ``(embed_dim, num_heads, num_layers)``. The first four are OpenAI's releases."""


class GPT2(Configurable, nn.Module):
    """GPT-2 language model: ids in, next-token logits out.

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
        super().__init__()
        hidden_dim = hidden_dim or 4 * embed_dim
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.embeddings = TokenEmbedding(
            vocab_size=vocab_size, embed_dim=embed_dim, max_seq_len=max_seq_len, dropout=dropout
        )
        self.layers = nn.ModuleList(
            PreNormBlock(
                self_attn=SelfAttention(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, bias=bias),
                mlp=MLP(
                    embed_dim=embed_dim,
                    hidden_dim=hidden_dim,
                    activation=nn.GELU(approximate="tanh"),
                    dropout=dropout,
                    bias=bias,
                ),
                self_attn_norm=nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias),
                mlp_norm=nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias),
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.embeddings.tokens.weight
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPT2:
        """Build a named size (see ``GPT2_SIZES``), e.g. ``GPT2.from_name("gpt2", vocab_size=8192)``."""
        if name not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {sorted(GPT2_SIZES)}")
        return cls(**{**GPT2_SIZES[name], **overrides})

    @classmethod
    def from_hf(cls, name_or_path: str | os.PathLike) -> GPT2:
        """Load a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``), or a Hub name such as ``"gpt2"`` when ``huggingface_hub`` is installed and
        online."""
        from zoo.models.gpt2.convert import load_hf

        return load_hf(cls, name_or_path)

    def to_hf(self, directory: str | os.PathLike) -> Path:
        """Write this model as a Hugging Face ``GPT2LMHeadModel`` directory (safetensors, atomic)."""
        from zoo.models.gpt2.convert import save_hf

        return save_hf(self, directory)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by
        ``1/sqrt(2 * num_layers)`` so the residual stream's variance does not grow with depth."""
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

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size) for ``input_ids`` (B, T).

        Args:
            input_ids: Token ids.
            attention_mask: (B, Tk) with 1 at real tokens and 0 at padding; with ``cache`` it covers
                cached plus new positions.
            position_ids: (B, T) positions; defaults to consecutive positions after the cached ones.
            cache: One `KVCache` per layer (see `init_cache`) for incremental decoding.
        """
        return self.lm_head(
            self.hidden_states(
                input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache
            )
        )

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> Tensor:
        """Final normalised hidden states (B, T, C); same arguments as `forward`."""
        past = cache[0].seq_len if cache else 0
        T = input_ids.shape[1]
        if position_ids is None:
            if past + T > self.max_seq_len:
                raise ValueError(f"sequence length {past + T} exceeds max_seq_len={self.max_seq_len}")
            position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.embeddings(input_ids, position_ids=position_ids)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, padding_mask=attention_mask, causal=True, kv_cache=cache[i] if cache else None)
        return self.norm(x)

    def init_cache(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[KVCache]:
        """One empty `KVCache` per layer, sized for ``max_seq_len`` (default: the context length)."""
        weight = self.lm_head.weight
        attn = self.layers[0].self_attn
        return [
            KVCache(
                batch_size=batch_size,
                num_heads=attn.num_heads,
                head_dim=attn.head_dim,
                max_seq_len=max_seq_len or self.max_seq_len,
                dtype=dtype or weight.dtype,
                device=device or weight.device,
            )
            for _ in self.layers
        ]

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward and backward) per token at context ``seq_len`` (default ``max_seq_len``):
        nanoGPT's ``6N + 12·L·H·Q·T`` (PaLM, appendix B), N the weights of the matrix products (the output
        layer's included, the embedding lookups' not), L layers of H heads of width Q, T the context."""
        attn = self.layers[0].self_attn
        N = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * N + 12 * self.num_layers * attn.num_heads * attn.head_dim * (seq_len or self.max_seq_len)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once); optionally without position/token embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embeddings.tokens.weight.numel() + self.embeddings.positions.weight.numel()
        return n
