"""The decoder skeleton: a stack of pre-norm blocks that owns the layer loop, the final norm and the caches.

A family builds its blocks (which attention, which MLP, which norm) and hands them to `DecoderStack`;
the stack runs them, and `DecoderStack.init_cache` makes one `DecoderCache` holding a `KVCache` per layer.
`DecoderLM` adds the token embedding and output layer around a stack: a decoder-only family subclasses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from zoo.nn.attention import KVCache
from zoo.nn.gqa import Attention
from zoo.nn.norms import RMSNorm


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
        self_attn: Self-attention (its ``causal`` flag and position encoding travel with it).
        mlp: Feed-forward sub-layer, (B, T, C) -> (B, T, C) (`zoo.nn.MLP`, `zoo.nn.GatedMLP`).
        self_attn_norm: Norm before attention.
        mlp_norm: Norm before the MLP.
        dropout: Residual dropout on the attention output (the MLP has its own).
    """

    def __init__(
        self,
        *,
        self_attn: Attention,
        mlp: nn.Module,
        self_attn_norm: nn.Module,
        mlp_norm: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.self_attn_norm = self_attn_norm
        self.mlp = mlp
        self.mlp_norm = mlp_norm
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); see `Attention.forward` for the other arguments."""
        h = self.self_attn(
            self.self_attn_norm(x), padding_mask=padding_mask, position_ids=position_ids, kv_cache=kv_cache
        )
        x = x + self.dropout(h)
        return x + self.mlp(self.mlp_norm(x))


class DecoderCache:
    """The key/value caches of every layer of a `DecoderStack`, advanced and reordered together.

    Args:
        caches: One `KVCache` per layer.
    """

    def __init__(self, caches: Iterable[KVCache]) -> None:
        self.layers = list(caches)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> KVCache:
        return self.layers[i]

    def __iter__(self) -> Iterator[KVCache]:
        return iter(self.layers)

    @property
    def seq_len(self) -> int:
        """Positions cached so far (the same in every layer)."""
        return self.layers[0].seq_len

    def reset(self) -> None:
        for cache in self.layers:
            cache.reset()

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (N,) in every layer (beam search)."""
        for cache in self.layers:
            cache.reorder(index)


class DecoderStack(nn.Module):
    """Causal decoder blocks followed by a final norm: embeddings in, normalised hidden states out.

    The stack owns what every decoder family repeats: the layer loop, the default position ids after the
    cached ones, and the caches. Llama passes `DecoderBlock`s of rotary grouped-query `Attention`, a SwiGLU
    `zoo.nn.GatedMLP` and `zoo.nn.RMSNorm`s. GPT-2 would pass `DecoderBlock`s of ``Attention`` with
    biased ``nn.Linear`` projections, ``num_kv_heads=num_heads``, no position encoding (its learned
    positions are added to the embeddings), an ``nn.GELU(approximate="tanh")`` `zoo.nn.MLP` and
    ``nn.LayerNorm``s, and an ``nn.LayerNorm`` as ``norm``.

    Args:
        layers: The blocks, in order; each is called as ``block(x, padding_mask=, position_ids=,
            kv_cache=)`` and its ``self_attn`` has ``num_kv_heads`` and ``head_dim`` (for the caches).
        norm: Final norm.
    """

    def __init__(self, *, layers: Iterable[nn.Module], norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Embedded tokens (B, T, C) -> final normalised hidden states (B, T, C).

        Args:
            x: Embedded input.
            padding_mask: (B, Tk) with 1 at real tokens; with a cache Tk covers cached plus new tokens.
            position_ids: (B, T) or (T,); defaults to the positions after the cached ones.
            cache: From `init_cache`, for incremental decoding.
        """
        if position_ids is None:
            past = cache.seq_len if cache is not None else 0
            position_ids = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
        for i, layer in enumerate(self.layers):
            kv_cache = cache[i] if cache is not None else None
            x = layer(x, padding_mask=padding_mask, position_ids=position_ids, kv_cache=kv_cache)
        return self.norm(x)

    def init_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> DecoderCache:
        """Empty caches for ``batch_size`` sequences of up to ``max_len`` tokens (prompt plus new)."""
        return DecoderCache(
            KVCache(
                batch_size=batch_size,
                num_heads=layer.self_attn.num_kv_heads,  # grouped heads: only nkv are stored
                head_dim=layer.self_attn.head_dim,
                max_seq_len=max_len,
                dtype=dtype,
                device=device,
            )
            for layer in self.layers
        )


class DecoderLM(nn.Module):
    """Token embedding, a `DecoderStack`, an output layer: the body every decoder-only family shares.

    A family subclasses it and only builds the parts (see `zoo.models.llama.Llama`); this class gives it
    the surface `zoo.tasks.CausalLM` and `zoo.tasks.generation` use: ``forward``, ``hidden_states``,
    ``init_cache``, ``flops_per_token``, ``reset_parameters``, ``max_seq_len``, ``vocab_size``.

    Args:
        tokens: Token embedding, vocab_size -> C.
        decoder: The blocks and final norm.
        lm_head: C -> vocab_size, without bias.
        max_seq_len: Context length.
        tie_weights: Share ``lm_head``'s weight with the token embedding.
        absolute_positions: Absolute position encoding added to the token embeddings, called on position
            ids like an ``nn.Embedding`` (`zoo.nn.LearnedPositions`, `zoo.nn.SinusoidalPositions`);
            ``None`` (the default): none, positions live only inside attention.
    """

    def __init__(
        self,
        *,
        tokens: nn.Embedding,
        decoder: DecoderStack,
        lm_head: nn.Linear,
        max_seq_len: int,
        tie_weights: bool,
        absolute_positions: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.tokens, self.decoder, self.lm_head = tokens, decoder, lm_head
        self.absolute_positions = absolute_positions
        self.vocab_size, self.max_seq_len, self.num_layers = (
            tokens.num_embeddings,
            max_seq_len,
            len(decoder.layers),
        )
        if tie_weights:
            self.lm_head.weight = self.tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) matrices and embeddings (transformers' ``initializer_range``), zero biases, unit
        norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm | nn.LayerNorm):
                module.reset_parameters()

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size); arguments as `hidden_states`."""
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
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Final normalised hidden states (B, T, C) for ``input_ids`` (B, T).

        Args:
            input_ids: Token ids.
            attention_mask: (B, Tk) with 1 at real tokens; with ``cache`` it covers cached plus new ones.
            position_ids: (B, T) positions (left padding needs them); defaults to consecutive positions
                after the cached ones.
            cache: From `init_cache`, for incremental decoding.
        """
        end = (cache.seq_len if cache is not None else 0) + input_ids.shape[1]
        if position_ids is None and end > self.max_seq_len:
            raise ValueError(f"sequence length {end} exceeds max_seq_len={self.max_seq_len}")
        x = self.tokens(input_ids)  # (B, T, C)
        if self.absolute_positions is not None:
            if position_ids is None:
                past = end - input_ids.shape[1]
                position_ids = torch.arange(past, end, device=input_ids.device)  # (T,)
            x = x + self.absolute_positions(position_ids)  # (B, T, C) or (T, C), broadcast over B
        return self.decoder(x, padding_mask=attention_mask, position_ids=position_ids, cache=cache)

    def init_cache(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DecoderCache:
        """Empty caches for every layer, sized for ``max_seq_len`` (default: the context length)."""
        weight = self.lm_head.weight
        max_len = max_seq_len or self.max_seq_len
        return self.decoder.init_cache(
            batch_size, max_len, dtype=dtype or weight.dtype, device=device or weight.device
        )

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward and backward) per token at context ``seq_len`` (default ``max_seq_len``):
        ``6N + 12·L·H·Q·T`` as for `zoo.models.gpt2.GPT2` (N the weights of the matrix products, the output
        layer's included; L layers of H query heads of width Q; T the context)."""
        attn = self.decoder.layers[0].self_attn
        N = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * N + 12 * self.num_layers * attn.num_heads * attn.head_dim * (seq_len or self.max_seq_len)
