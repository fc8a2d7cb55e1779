"""The skeletons: stacks of blocks that own the layer loop, the final norm and the caches.

A family builds its blocks (which attention, which MLP, which norm: `zoo.nn.PreNormBlock`,
`zoo.nn.PostNormBlock`) and hands them to a stack. `EncoderStack` runs bidirectional blocks;
`DecoderStack` runs causal ones, with cross-attention to an encoder's memory when its blocks have it, and
`DecoderStack.init_cache` makes one `DecoderCache` holding a `KVCache` per layer (two with
cross-attention). `DecoderLM` adds the token embedding and output layer around a decoder stack: a
decoder-only family subclasses it. An encoder-decoder is an `EncoderStack` and a `DecoderStack` (see
`zoo.models.seq2seq.Transformer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from zoo.nn.attention import KVCache, document_position_ids
from zoo.nn.norms import RMSNorm


class DecoderCache:
    """The key/value caches of every layer of a `DecoderStack`, advanced and reordered together.

    Args:
        self_attn: One `KVCache` per layer for the sequence's own keys/values; grows with each call.
        cross_attn: One `KVCache` per layer for the memory's keys/values (encoder-decoders): filled by the
            first call, then only read; ``None`` for a decoder-only stack.
    """

    def __init__(self, self_attn: Iterable[KVCache], cross_attn: Iterable[KVCache] | None = None) -> None:
        self.self_attn = list(self_attn)
        self.cross_attn = list(cross_attn) if cross_attn is not None else None

    def __len__(self) -> int:
        return len(self.self_attn)

    @property
    def seq_len(self) -> int:
        """Positions cached so far (the same in every layer)."""
        return self.self_attn[0].seq_len

    def reset(self) -> None:
        for cache in (*self.self_attn, *(self.cross_attn or ())):
            cache.reset()

    def reorder(self, index: Tensor) -> None:
        """Make row ``i`` continue row ``index[i]`` in every layer: (N,) row ids, which may repeat rows and
        change the batch size (beam search: one row per prompt, then one per beam, each its parent's)."""
        for cache in (*self.self_attn, *(self.cross_attn or ())):
            cache.reorder(index)


def _kv_cache(attn: nn.Module, batch_size: int, length: int, **kwargs) -> KVCache:
    """An empty cache for ``length`` positions of attention module ``attn`` (only nkv heads are stored)."""
    return KVCache(
        batch_size=batch_size,
        num_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        max_seq_len=length,
        **kwargs,
    )


class DecoderStack(nn.Module):
    """Causal blocks followed by a final norm: embeddings in, normalised hidden states out.

    The stack owns what every decoder repeats: the layer loop, the default position ids after the cached
    ones, the encoder memory handed to each block's cross-attention, and the caches. Llama passes
    `zoo.nn.PreNormBlock`s of rotary grouped-query `zoo.nn.Attention`, a SwiGLU `zoo.nn.GatedMLP` and
    `zoo.nn.RMSNorm`s; GPT-2 pre-norm blocks of fused-QKV attention and a GELU `zoo.nn.MLP`; the
    seq2seq Transformer blocks with cross-attention.

    Args:
        layers: The blocks, in order; each is called as ``block(x, padding_mask=, position_ids=,
            kv_cache=)`` (plus ``memory=, memory_mask=, cross_kv_cache=`` when given a memory, and
            ``document_ids=`` for packed rows) and has a ``self_attn`` (and ``cross_attn``) with
            ``num_kv_heads`` and ``head_dim`` (for the caches).
        norm: Final norm (``None``: none, e.g. post-norm blocks end normalised).
    """

    def __init__(self, *, layers: Iterable[nn.Module], norm: nn.Module | None = None) -> None:
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
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Embedded tokens (B, T, C) -> final normalised hidden states (B, T, C).

        Args:
            x: Embedded input.
            padding_mask: (B, Tk) with 1 at real tokens; with a cache Tk covers cached plus new tokens.
            position_ids: (B, T) or (T,); defaults to the positions after the cached ones, or with
                ``document_ids`` to positions restarting at each document.
            cache: From `init_cache`, for incremental decoding.
            memory: Encoder output (B, S, Cm) for the blocks' cross-attention.
            memory_mask: (B, S) with 1 at real memory positions.
            document_ids: (B, T) document of each position of packed rows (no cache): self-attention
                stays within each document (see `zoo.nn.Attention`).
        """
        if position_ids is None and document_ids is not None:
            position_ids = document_position_ids(document_ids)  # (B, T)
        elif position_ids is None:
            past = cache.seq_len if cache is not None else 0
            position_ids = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
        packed = {"document_ids": document_ids} if document_ids is not None else {}  # blocks may not take it
        for i, layer in enumerate(self.layers):
            kv_cache = cache.self_attn[i] if cache is not None else None
            cross = {}
            if memory is not None:  # only blocks with cross-attention are given a memory
                cross_kv = cache.cross_attn[i] if cache is not None and cache.cross_attn else None
                cross = {"memory": memory, "memory_mask": memory_mask, "cross_kv_cache": cross_kv}
            x = layer(
                x, padding_mask=padding_mask, position_ids=position_ids, kv_cache=kv_cache, **cross, **packed
            )
        return x if self.norm is None else self.norm(x)

    def init_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        memory_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> DecoderCache:
        """Empty caches for ``batch_size`` sequences of up to ``max_len`` tokens (prompt plus new), and with
        ``memory_len`` for a memory of that many positions (blocks with cross-attention)."""
        kw = {"dtype": dtype, "device": device}
        own = [_kv_cache(layer.self_attn, batch_size, max_len, **kw) for layer in self.layers]
        if memory_len is None:
            return DecoderCache(own)
        return DecoderCache(
            own, [_kv_cache(layer.cross_attn, batch_size, memory_len, **kw) for layer in self.layers]
        )


class EncoderStack(nn.Module):
    """Bidirectional blocks, optionally followed by a final norm: embeddings in, hidden states out.

    Args:
        layers: The blocks, in order; each is called as ``block(x, padding_mask=)``; the last one also with
            ``query_index=`` when outputs are wanted at a few positions only (`zoo.nn.PostNormBlock`).
        norm: Final norm (pre-norm blocks leave the residual stream unnormalised); ``None``: none.
    """

    def __init__(self, *, layers: Iterable[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        output_positions: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Embedded tokens (B, T, C) -> last-layer hidden states (B, T, C).

        Args:
            x: Embedded input.
            padding_mask: (B, T) with 1 at real tokens and 0 at padding.
            output_positions: (B, N): the last layer computes only these rows and (B, N, C) is returned.
            document_ids: (B, T) sequence of each position of packed rows: attention stays within each
                sequence (see `zoo.nn.Attention`); the blocks must take ``document_ids``.
        """
        last = len(self.layers) - 1
        packed = {"document_ids": document_ids} if document_ids is not None else {}  # blocks may not take it
        for i, layer in enumerate(self.layers):
            if i == last and output_positions is not None:
                x = layer(x, padding_mask=padding_mask, query_index=output_positions, **packed)
            else:
                x = layer(x, padding_mask=padding_mask, **packed)
        return x if self.norm is None else self.norm(x)


class DecoderLM(nn.Module):
    """Token embedding, a `DecoderStack`, an output layer: the body every decoder-only family shares.

    A family subclasses it and only builds the parts (see `zoo.models.llama.Llama`); this class gives it
    the surface `zoo.tasks.CausalLM`, the fine-tuning tasks and decoding use: ``forward``, ``hidden_states``,
    ``init_cache``, ``flops_per_token``, ``reset_parameters``, ``max_seq_len``, ``vocab_size``. It takes
    packed rows (``document_ids``), so it is a `zoo.models.protocols.PackedDecoder`.

    Args:
        tokens: Token embedding, vocab_size -> C.
        decoder: The blocks and final norm.
        lm_head: C -> vocab_size, without bias.
        max_seq_len: Context length.
        tie_weights: Share ``lm_head``'s weight with the token embedding.
        absolute_positions: Absolute position encoding added to the token embeddings, called on position
            ids like an ``nn.Embedding`` (`zoo.nn.LearnedPositions`, `zoo.nn.SinusoidalPositions`);
            ``None`` (the default): none, positions live only inside attention.
        embed_dropout: Dropout on the embeddings (GPT-2's ``embd_pdrop``).
    """

    accepts_document_ids: ClassVar[bool] = True
    """``forward`` and ``hidden_states`` take ``document_ids`` (`zoo.models.protocols.PackedDecoder`)."""

    def __init__(
        self,
        *,
        tokens: nn.Embedding,
        decoder: DecoderStack,
        lm_head: nn.Linear,
        max_seq_len: int,
        tie_weights: bool,
        absolute_positions: nn.Module | None = None,
        embed_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tokens, self.absolute_positions = tokens, absolute_positions
        self.embed_dropout = nn.Dropout(embed_dropout)  # p=0 draws no random numbers
        self.decoder, self.lm_head = decoder, lm_head
        self.vocab_size, self.max_seq_len = tokens.num_embeddings, max_seq_len
        self.embed_dim, self.num_layers = tokens.embedding_dim, len(decoder.layers)
        if tie_weights:
            self.lm_head.weight = self.tokens.weight
        self.reset_parameters()

    @property
    def layers(self) -> nn.ModuleList:
        """The blocks, in order (layer-wise learning rates count them)."""
        return self.decoder.layers

    @property
    def token_embedding(self) -> nn.Embedding:
        """``tokens``, whose output adversarial training perturbs (`zoo.models.protocols.TokenEmbedder`)."""
        return self.tokens

    @property
    def embeddings(self) -> nn.ModuleList:
        """The input embeddings: the token table and the absolute positions, if any (what
        ``freeze_embeddings`` freezes)."""
        return nn.ModuleList(m for m in (self.tokens, self.absolute_positions) if m is not None)

    def reset_parameters(self) -> None:
        """N(0, 0.02) matrices and embeddings (transformers' ``initializer_range``), zero biases, unit
        norms; drawn in the order tokens, blocks, output layer, absolute positions."""
        for part in (self.tokens, self.decoder, self.lm_head, self.absolute_positions):
            for module in part.modules() if part is not None else ():
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
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size); arguments as `hidden_states`."""
        return self.lm_head(
            self.hidden_states(
                input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                document_ids=document_ids,
            )
        )

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DecoderCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Final normalised hidden states (B, T, C) for ``input_ids`` (B, T).

        Args:
            input_ids: Token ids.
            attention_mask: (B, Tk) with 1 at real tokens; with ``cache`` it covers cached plus new ones.
            position_ids: (B, T) positions (left padding needs them); defaults to consecutive positions
                after the cached ones, or with ``document_ids`` to positions restarting at each document.
            cache: From `init_cache`, for incremental decoding.
            document_ids: (B, T) document of each position when a row packs several documents (one run
                of equal ids each): no position attends across a document boundary, so each document
                gives the logits it would give alone. Not with ``cache``.

        Raises:
            ValueError: A sequence longer than ``max_seq_len`` (without ``position_ids``), or
                ``document_ids`` with a cache.
        """
        end = (cache.seq_len if cache is not None else 0) + input_ids.shape[1]
        if position_ids is None and end > self.max_seq_len:
            raise ValueError(f"sequence length {end} exceeds max_seq_len={self.max_seq_len}")
        if document_ids is not None:
            if cache is not None:
                raise ValueError(
                    "document_ids (packed documents) cannot be used with a KV cache: decode one document "
                    "per row"
                )
            if position_ids is None:
                position_ids = document_position_ids(document_ids)  # (B, T)
        x = self.tokens(input_ids)  # (B, T, C)
        if self.absolute_positions is not None:
            if position_ids is None:
                past = end - input_ids.shape[1]
                position_ids = torch.arange(past, end, device=input_ids.device)  # (T,)
            x = x + self.absolute_positions(position_ids)  # (B, T, C) or (T, C), broadcast over B
        x = self.embed_dropout(x)
        return self.decoder(
            x, padding_mask=attention_mask, position_ids=position_ids, cache=cache, document_ids=document_ids
        )

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

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once); optionally without the embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.embeddings.parameters())
        return n


class EncoderDecoderFlops:
    """FLOPs estimates for an encoder-decoder ``nn.Module`` with ``encoder`` and ``decoder`` stacks (each
    with ``layers`` whose ``self_attn`` is a `zoo.nn.Attention`) and ``max_seq_len``: mixed into
    `zoo.models.seq2seq.Transformer` and `zoo.models.bert.BertEncoderDecoder`.

    nanoGPT's ``6N + 12·L·H·Q·T``, split by side: a source token passes the weights of ``encoder`` and its
    self-attention; a target token the rest (the decoder, its output layer) and the decoder's self- and
    cross-attention (the cross-attention counted at the target's length too).
    `zoo.tasks.monitor.ProgressMonitor` counts each side's tokens with its own estimate.
    """

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward and backward) of one source and one target token, for sources and
        targets of ``seq_len`` tokens each (default ``max_seq_len``)."""
        return self.source_flops_per_token(seq_len) + self.target_flops_per_token(seq_len)

    def source_flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per source token of a ``seq_len``-token source: the encoder's share."""
        return self._side_flops(seq_len, source=True)

    def target_flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per target token of a ``seq_len``-token target: the decoder's share."""
        return self._side_flops(seq_len, source=False)

    def _side_flops(self, seq_len: int | None, *, source: bool) -> int:
        model: Any = self
        linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
        encoder = {id(m.weight) for m in model.encoder.modules() if isinstance(m, nn.Linear)}
        attn = model.encoder.layers[0].self_attn
        per_layer = 12 * attn.num_heads * attn.head_dim * (seq_len or model.max_seq_len)
        if source:
            return 6 * sum(linear[k] for k in encoder) + len(model.encoder.layers) * per_layer
        decoder = sum(n for k, n in linear.items() if k not in encoder)
        return 6 * decoder + 2 * len(model.decoder.layers) * per_layer
