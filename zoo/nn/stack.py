"""The skeletons: stacks of blocks that own the layer loop, the final norm and the caches.

A family builds its blocks (which attention, which MLP, which norm: `zoo.nn.PreNormBlock`,
`zoo.nn.PostNormBlock`) and hands them to a stack. `EncoderStack` runs bidirectional blocks;
`DecoderStack` runs causal ones, with cross-attention to an encoder's memory when its blocks have it, and
`DecoderStack.init_cache` makes one `DecoderCache` holding a `KVCache` per layer (two with
cross-attention). `DecoderLM` adds the token embedding and output layer around a decoder stack: a
decoder-only family subclasses it. `EncoderDecoderLM` puts an encoder, a target embedding, a decoder stack
with cross-attention and an output layer together: an encoder-decoder family subclasses it (see
`zoo.models.seq2seq.Transformer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

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
        last_only: bool = False,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size), or (B, 1, vocab_size) of the last position with
        ``last_only`` (decoding after a prompt reads no other: the output layer, the widest matrix, then
        multiplies one row per sequence instead of T), or (N, vocab_size) of the N positions where the
        boolean ``logits_at`` (B, T) is true, in row-major order (a loss that scores only some positions,
        e.g. the answers of chat fine-tuning, computes the output layer only there); other arguments as
        `hidden_states`."""
        hidden = self.hidden_states(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            document_ids=document_ids,
        )  # (B, T, C)
        if logits_at is not None:
            return self.lm_head(hidden[logits_at])  # (N, V)
        return self.lm_head(hidden[:, -1:] if last_only else hidden)

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


class EncoderDecoderLM(nn.Module):
    """Source embedding and encoder, target embedding, a `DecoderStack` with cross-attention, an output
    layer: the body every encoder-decoder family shares (an `zoo.models.protocols.EncoderDecoder`).

    A family subclasses it and only builds the parts (see `zoo.models.seq2seq.Transformer`,
    `zoo.models.bert.BertEncoderDecoder`) and its ``reset_parameters``; this class owns ``forward``,
    ``encode``, ``decode``, ``init_cache``, ``num_parameters`` and the FLOPs estimates.

    The embeddings keep the names a family's checkpoints use (``embedding_names``). Parts are registered
    embeddings first, then the stacks and the output layer; an encoder that embeds its own ids counts as
    the source embedding. That order is the one of parameters (optimizer states) and of initialisation.

    Args:
        encoder: With ``source_embedding``, a stack called as ``encoder(x, padding_mask=)`` on the embedded
            source (`EncoderStack`); without, a model that embeds the ids itself, called as
            ``encoder.hidden_states(src_ids, attention_mask=)`` (e.g. `zoo.models.bert.Bert`). It has
            ``layers`` whose ``self_attn`` is a `zoo.nn.Attention` (for the FLOPs).
        target_embedding: Target ids (B, T) -> (B, T, C), called with ``position_ids=`` (T,).
        decoder: Causal blocks with cross-attention to the encoder's output.
        lm_head: C -> vocab_size.
        max_seq_len: Positions of each side (longest source, longest target prefix).
        source_embedding: Source ids (B, S) -> (B, S, C), called with ``position_ids=`` (S,); ``None`` when
            ``encoder`` embeds its ids.
    """

    embedding_names: ClassVar[tuple[str | None, str]]
    """The attributes (state-dict prefixes) of the source embedding (``None``: the encoder embeds its ids)
    and of the target embedding, e.g. ``("src_embed", "tgt_embed")``."""

    def __init__(
        self,
        *,
        encoder: nn.Module,
        target_embedding: nn.Module,
        decoder: DecoderStack,
        lm_head: nn.Linear,
        max_seq_len: int,
        source_embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        source_name, target_name = self.embedding_names
        if (source_name is None) != (source_embedding is None):
            raise TypeError(
                f"{type(self).__name__}.embedding_names {self.embedding_names} and the parts differ"
            )
        if source_embedding is None:
            self.encoder = encoder
        else:
            setattr(self, source_name, source_embedding)
        setattr(self, target_name, target_embedding)
        if source_embedding is not None:
            self.encoder = encoder
        self.decoder, self.lm_head = decoder, lm_head
        self.vocab_size, self.embed_dim = lm_head.out_features, lm_head.in_features
        self.max_seq_len = max_seq_len
        self.reset_parameters()

    @property
    def source_embedding(self) -> nn.Module | None:
        """The source embedding; ``None`` when the encoder embeds its ids."""
        name = self.embedding_names[0]
        return None if name is None else getattr(self, name)

    @property
    def target_embedding(self) -> nn.Module:
        """The target embedding."""
        return getattr(self, self.embedding_names[1])

    def reset_parameters(self) -> None:
        """The family's initialisation (each family draws its own)."""
        raise NotImplementedError(f"{type(self).__name__} defines no reset_parameters")

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, vocab_size): position ``t`` predicts target token ``t + 1``.

        Args:
            src_ids: (B, S) source ids.
            tgt_ids: (B, T) decoder input (a start token then the target, right-padded: the causal mask
                keeps padding out of every real position's view).
            attention_mask: (B, S) with 1 at real source tokens and 0 at padding; ``None`` when unpadded.
        """
        memory = self.encode(src_ids, attention_mask=attention_mask)
        return self.decode(tgt_ids, memory, memory_mask=attention_mask)

    def encode(self, src_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder output ("memory") (B, S, C) for ``src_ids`` (B, S); ``attention_mask`` as in `forward`."""
        if self.source_embedding is None:
            return self.encoder.hidden_states(src_ids, attention_mask=attention_mask)
        x = self.source_embedding(src_ids, position_ids=self._positions(0, src_ids))  # (B, S, C)
        return self.encoder(x, padding_mask=attention_mask)  # (B, S, C)

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        *,
        memory_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab_size) for target ids (B, T) given the memory (B, S, C).

        Args:
            tgt_ids: Decoder input; with ``cache``, only the positions after those already cached.
            memory: Encoder output.
            memory_mask: (B, S) source padding mask (1 at real tokens).
            cache: From `init_cache`: keys/values of earlier positions and of the memory, which are
                computed on the first call only.
        """
        start = cache.seq_len if cache is not None else 0
        x = self.target_embedding(tgt_ids, position_ids=self._positions(start, tgt_ids))  # (B, T, C)
        return self.lm_head(self.decoder(x, cache=cache, memory=memory, memory_mask=memory_mask))

    def _positions(self, start: int, ids: Tensor) -> Tensor:
        """Position ids ``start .. start+T-1`` (T,) of ``ids`` (B, T); a `ValueError` past ``max_seq_len``."""
        end = start + ids.shape[1]
        if end > self.max_seq_len:
            raise ValueError(f"sequence length {end} exceeds the model's max_seq_len={self.max_seq_len}")
        return torch.arange(start, end, device=ids.device)  # (T,)

    def init_cache(
        self,
        batch_size: int,
        *,
        target_len: int,
        source_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DecoderCache:
        """Empty caches for ``batch_size`` rows, up to ``target_len`` decoder positions and a memory of
        ``source_len`` positions: a `DecoderCache` whose ``reorder(index)`` moves (and may repeat) rows for
        beam search."""
        weight = self.lm_head.weight
        return self.decoder.init_cache(
            batch_size,
            target_len,
            memory_len=source_len,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
        )

    def num_parameters(self) -> int:
        """Parameter count, shared and tied tables counted once."""
        return sum(p.numel() for p in self.parameters())

    # FLOPs: nanoGPT's ``6N + 12·L·H·Q·T``, split by side. A source token passes the weights of
    # ``encoder`` and its self-attention; a target token the rest (the decoder, its output layer) and the
    # decoder's self- and cross-attention (the cross-attention counted at the target's length too).
    # `zoo.tasks.monitor.ProgressMonitor` counts each side's tokens with its own estimate.

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
        linear = {id(m.weight): m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear)}
        encoder = {id(m.weight) for m in self.encoder.modules() if isinstance(m, nn.Linear)}
        attn = self.encoder.layers[0].self_attn
        per_layer = 12 * attn.num_heads * attn.head_dim * (seq_len or self.max_seq_len)
        if source:
            return 6 * sum(linear[k] for k in encoder) + len(self.encoder.layers) * per_layer
        decoder = sum(n for k, n in linear.items() if k not in encoder)
        return 6 * decoder + 2 * len(self.decoder.layers) * per_layer
