"""Attention assembled from injected parts, on ``torch.nn.functional.scaled_dot_product_attention``.

`Attention` does self-attention (keys and values from the input) and cross-attention (from a ``memory``)
in one class. Its projections are whatever modules the caller passes, so an adapter (LoRA) or a
quantised layer arrives by injection: separate ``q_proj``/``k_proj``/``v_proj`` (Llama, BERT in
transformers), or fused ``qkv_proj`` (one matmul for self-attention: GPT-2, zoo's BERT) and ``kv_proj``
(cross-attention's memory side). A relative position encoding (`zoo.nn.positions`) is applied to queries
and keys. Grouped-query attention (Ainslie et al. 2023) shares each key/value head among
``num_heads // num_kv_heads`` query heads; ``num_kv_heads == num_heads`` is plain multi-head attention and
``num_kv_heads == 1`` multi-query attention. A `KVCache` holds keys/values for incremental decoding.

Packed rows (several documents concatenated into one row) pass ``document_ids`` (B, T): a query sees only
keys of its own document (`build_attention_mask`), and positions restart at each document
(`document_position_ids`), so every document is computed as if it were alone. SDPA takes the boolean
mask; on CUDA, when ``torch.nn.attention.flex_attention`` exists, a block mask (`document_block_mask`)
lets FlexAttention skip the blocks between documents.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import check_positive, check_probability

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch: packed rows always go through SDPA's mask
    BlockMask = create_block_mask = flex_attention = None


class KVCache(nn.Module):
    """Pre-allocated key/value cache for one attention layer.

    Args:
        batch_size: Number of sequences decoded together.
        num_heads: Attention heads of the layer.
        head_dim: Size of one head.
        max_seq_len: Longest sequence (prompt plus generated tokens) the cache can hold.
        dtype: Storage dtype (match the model's compute dtype).
        device: Storage device.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.seq_len = 0

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        self.seq_len = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``/``v`` of shape (B, nh, T, hs); return everything cached so far."""
        start, end = self.seq_len, self.seq_len + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache holds {self.max_seq_len} positions; cannot append up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.seq_len = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Make row ``i`` continue row ``index[i]``: (N,) row ids, which may repeat rows and change the
        batch size (beam search: one row per source, then one per beam, each beam its parent's row)."""
        n = self.seq_len
        if len(index) == self.k.shape[0]:  # in place, only the filled positions
            self.k[:, :, :n] = self.k[:, :, :n].index_select(0, index)  # (B, nh, n, hs)
            self.v[:, :, :n] = self.v[:, :, :n].index_select(0, index)
        else:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)  # (N, nh, T, hs)

    def cached(self) -> tuple[Tensor, Tensor]:
        """The keys and values stored so far, (B, nh, seq_len, hs) each."""
        return self.k[:, :, : self.seq_len], self.v[:, :, : self.seq_len]


def build_attention_mask(
    *,
    key_padding_mask: Tensor | None,
    num_queries: int,
    num_keys: int,
    causal: bool,
    device: torch.device,
    document_ids: Tensor | None = None,
    query_document_ids: Tensor | None = None,
) -> Tensor | None:
    """Boolean mask broadcastable to (B, nh, Tq, Tk); ``True`` means "may attend".

    Queries are the last ``num_queries`` positions of the ``num_keys`` keys (the KV-cache layout), so
    the causal diagonal is offset by ``num_keys - num_queries``. Returns ``None`` when no masking is
    needed so SDPA can pick its fastest kernel.

    Args:
        key_padding_mask: (B, Tk), ``True``/1 at real tokens, ``False``/0 at padding, or ``None``.
        num_queries: Tq.
        num_keys: Tk.
        causal: Whether query ``i`` may only see keys up to its own position.
        device: Device for the mask.
        document_ids: (B, T) document of each position of packed rows (no cache: Tq = Tk = T): query
            ``i`` sees key ``j`` only when both are in the same document (a block-diagonal mask).
        query_document_ids: (B, Tq) documents of the queries when they are a subset of the positions
            (`Attention`'s ``query_index``); default ``document_ids``.

    Raises:
        ValueError: ``document_ids`` whose length is not both Tq and Tk.
    """
    mask = None
    if causal:
        offset = num_keys - num_queries
        q_pos = torch.arange(num_queries, device=device).unsqueeze(1) + offset  # (Tq, 1)
        mask = q_pos >= torch.arange(num_keys, device=device).unsqueeze(0)  # (Tq, Tk)
        mask = mask[None, None]  # (1, 1, Tq, Tk)
    if document_ids is not None:
        queries = document_ids if query_document_ids is None else query_document_ids
        if not (document_ids.shape[-1] == num_keys and queries.shape[-1] == num_queries):
            raise ValueError(
                f"document_ids cover {document_ids.shape[-1]} positions; packed rows need them for every "
                f"query and key ({num_queries} queries, {num_keys} keys: no KV cache)"
            )
        same = queries[:, None, :, None] == document_ids[:, None, None, :]  # (B, 1, Tq, Tk)
        mask = same if mask is None else mask & same
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :].bool()  # (B, 1, 1, Tk)
        mask = keep if mask is None else mask & keep
        # A query that sees no key at all (a left-padding position) would give NaN; let it see
        # every key instead. Its output is padding and is never read.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


def document_position_ids(document_ids: Tensor) -> Tensor:
    """Positions that restart at 0 where each document of a packed row begins: (B, T) -> (B, T).

    Document ids ``0 0 0 1 1 2 2 2`` give positions ``0 1 2 0 1 0 1 2``; a document is a run of equal ids.
    """
    index = torch.arange(document_ids.shape[-1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T)
    starts[..., 1:] = document_ids[..., 1:] != document_ids[..., :-1]
    first = torch.where(starts, index, 0).cummax(dim=-1).values  # (B, T): where each position's run began
    return index - first


def document_block_mask(
    document_ids: Tensor, *, key_padding_mask: Tensor | None = None, causal: bool = True
) -> BlockMask:
    """FlexAttention's block mask for packed rows: the same rule as `build_attention_mask` with
    ``document_ids`` (same document, ``j <= i`` when causal, real keys only), evaluated blockwise so that
    the kernel skips the blocks between documents.

    Args:
        document_ids: (B, T) document of each position.
        key_padding_mask: (B, T) with 1 at real tokens, or ``None``.
        causal: Query ``i`` sees keys up to its own position only.
    """
    real = key_padding_mask.bool() if key_padding_mask is not None else None

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        keep = document_ids[b, q] == document_ids[b, k]
        if causal:
            keep = keep & (k <= q)
        return keep if real is None else keep & real[b, k]

    B, T = document_ids.shape
    return create_block_mask(mask_mod, B=B, H=None, Q_LEN=T, KV_LEN=T, device=document_ids.device)


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention)  # eager flex_attention materialises every score; compiled fuses


# SDPA shares key/value heads itself from torch 2.5 on; before that the heads are repeated.
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads and injected projections.

    Give either ``qkv_proj`` (self-attention, fused), or ``q_proj`` with ``k_proj`` and ``v_proj`` or
    with a fused ``kv_proj``.

    Args:
        out_proj: nh·hs -> C.
        num_heads: Query heads nh.
        head_dim: Size of one head hs.
        q_proj: C -> nh·hs (queries).
        k_proj: Cm -> nkv·hs (keys; Cm = C for self-attention, the memory width for cross-attention).
        v_proj: Cm -> nkv·hs (values).
        qkv_proj: C -> (nh + 2·nkv)·hs: queries, keys and values in one matmul (self-attention only).
        kv_proj: Cm -> 2·nkv·hs: keys and values in one matmul.
        num_kv_heads: Key/value heads nkv, dividing ``num_heads``; ``None`` means ``num_heads``.
        positions: Relative position encoding (`zoo.nn.RotaryPositions`, `zoo.nn.ALiBiPositions`);
            ``None`` for none (absolute positions are added to the embeddings instead). Not applied to
            cross-attention.
        causal: Query ``i`` sees keys up to its own position only (self-attention in a decoder).
        dropout: Attention-probability dropout (training only).

    Raises:
        ValueError: Sizes that are not positive or do not divide, or a projection set other than the
            three above.
    """

    def __init__(
        self,
        *,
        out_proj: nn.Module,
        num_heads: int,
        head_dim: int,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        qkv_proj: nn.Module | None = None,
        kv_proj: nn.Module | None = None,
        num_kv_heads: int | None = None,
        positions: nn.Module | None = None,
        causal: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        check_positive("Attention", num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
        check_probability("Attention", dropout=dropout)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")
        fused = (q_proj is None, qkv_proj is not None, kv_proj is not None)
        if fused not in {(True, True, False), (False, False, True), (False, False, False)} or (
            (k_proj is None) != (v_proj is None)
            or (k_proj is None) != (qkv_proj is not None or kv_proj is not None)
        ):
            raise ValueError(
                "Attention takes qkv_proj, or q_proj with k_proj and v_proj, or q_proj with kv_proj"
            )
        if qkv_proj is not None or kv_proj is not None:
            # fused: out_proj first, the parameter order of checkpoints from before the stacks
            self.out_proj, self.qkv_proj, self.q_proj, self.kv_proj = out_proj, qkv_proj, q_proj, kv_proj
            self.k_proj = self.v_proj = None
        else:
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
            self.qkv_proj = self.kv_proj = None
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.positions = positions
        self.causal = causal
        self.dropout = dropout

    def _split(self, x: Tensor, heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, hs)

    def _project(
        self, x: Tensor, source: Tensor, query_index: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries of ``x`` (only the rows ``query_index``, when given) and keys/values of ``source``."""
        nq, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.qkv_proj is not None and query_index is not None and type(self.qkv_proj) is nn.Linear:
            # a plain fused projection computes the queries of the chosen rows only; any other module
            # (an adapter, a quantised layer) is called whole below, so nothing it adds is skipped
            w, b = self.qkv_proj.weight, self.qkv_proj.bias
            q = F.linear(_rows(x, query_index), w[:nq], None if b is None else b[:nq])  # (B, N, nh·hs)
            k, v = F.linear(x, w[nq:], None if b is None else b[nq:]).split(kv, dim=2)
        elif self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([nq, kv, kv], dim=2)
            q = q if query_index is None else _rows(q, query_index)  # (B, N, nh·hs)
        else:
            q = self.q_proj(x if query_index is None else _rows(x, query_index))
            if self.kv_proj is not None:
                k, v = self.kv_proj(source).split(kv, dim=2)
            else:
                k, v = self.k_proj(source), self.v_proj(source)
        heads = self.num_kv_heads
        return self._split(q, self.num_heads), self._split(k, heads), self._split(v, heads)

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        query_index: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """Attend ``x`` (B, T, C) to itself, or to ``memory`` (B, S, Cm); returns (B, T, C), or (B, N, C)
        with ``query_index``.

        Args:
            x: Query sequence.
            memory: Keys/values source for cross-attention; ``None`` for self-attention.
            padding_mask: (B, Tk) with 1 at real keys; with a self-attention cache Tk covers cached plus
                new tokens.
            position_ids: (B, T) or (T,) positions of ``x`` for the position encoding; defaults to the
                positions after the cached ones, or with ``document_ids`` to positions restarting at each
                document (`document_position_ids`).
            kv_cache: Self-attention: this call's keys/values are appended and all cached ones attended.
                Cross-attention: filled from ``memory`` on first use, then only read.
            query_index: (B, N) positions whose outputs are wanted (bidirectional attention without a
                cache or relative positions): only their queries are attended; keys and values still cover
                every position (a last layer read at a few positions).
            document_ids: (B, T) document of each position of packed rows (self-attention without a
                cache): a query attends only to keys of its own document (with ``query_index`` too).

        Raises:
            ValueError: ``query_index`` with a cache, causal attention or relative positions;
                ``document_ids`` with a cache or cross-attention.
        """
        cross = memory is not None
        if query_index is not None and (kv_cache is not None or self.causal or self.positions is not None):
            raise ValueError(
                "query_index is for bidirectional attention without a cache or relative positions"
            )
        if document_ids is not None and (kv_cache is not None or cross):
            raise ValueError(
                "document_ids (packed documents) are for self-attention over whole rows: not with a KV "
                "cache or cross-attention; decode one document per row instead"
            )
        if cross and kv_cache is not None and kv_cache.seq_len > 0:  # the memory's keys/values, cached once
            q = self._split(self.q_proj(x), self.num_heads)  # (B, nh, T, hs)
            k, v = kv_cache.cached()  # (B, nkv, S, hs)
        else:
            q, k, v = self._project(x, memory if cross else x, query_index)  # (B, nh, T, hs), (B, nkv, S, hs)
            if self.positions is not None and not cross:
                if position_ids is None and document_ids is not None:
                    position_ids = document_position_ids(document_ids)  # (B, T)
                elif position_ids is None:
                    past = kv_cache.seq_len if kv_cache is not None else 0
                    position_ids = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
                q, k = self.positions.apply(q, k, position_ids)
            if kv_cache is not None:
                k, v = kv_cache.update(k, v)  # (B, nkv, Tk, hs)
        queries = None  # the documents of the chosen query rows
        if query_index is not None and document_ids is not None:
            queries = document_ids.gather(1, query_index)  # (B, N)
        y = self._attend(q, k, v, padding_mask, cross, document_ids=document_ids, query_documents=queries)
        return self.out_proj(y)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        padding_mask: Tensor | None,
        cross: bool,
        document_ids: Tensor | None = None,
        query_documents: Tensor | None = None,
    ) -> Tensor:
        B, _, Tq, _ = q.shape
        Tk = k.shape[2]
        causal = self.causal and not cross
        bias = self.positions.bias(Tq, Tk) if self.positions is not None and not cross else None
        if document_ids is not None and query_documents is None and self._flex_applies(q, bias):
            y = _compiled_flex_attention()(
                q,
                k,
                v,
                block_mask=document_block_mask(document_ids, key_padding_mask=padding_mask, causal=causal),
                enable_gqa=self.num_kv_heads != self.num_heads,
            )  # (B, nh, Tq, hs)
            return y.transpose(1, 2).reshape(B, Tq, self.num_heads * self.head_dim)  # (B, Tq, nh·hs)
        mask, is_causal = None, False
        if (
            padding_mask is not None
            or bias is not None
            or document_ids is not None
            or (causal and Tq != Tk and Tq > 1)
        ):
            mask = build_attention_mask(
                key_padding_mask=padding_mask,
                num_queries=Tq,
                num_keys=Tk,
                causal=causal,
                device=q.device,
                document_ids=document_ids,
                query_document_ids=query_documents,
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

    def _flex_applies(self, q: Tensor, bias: Tensor | None) -> bool:
        """Packed rows go to compiled FlexAttention on CUDA when it computes what SDPA would:
        no additive bias (ALiBi), no attention dropout, a head size of a power of two from 16 on."""
        hs = q.shape[-1]
        return (
            flex_attention is not None
            and q.is_cuda
            and bias is None
            and not (self.training and self.dropout > 0)
            and hs >= 16
            and hs & (hs - 1) == 0
        )


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, N) of ``x`` (B, T, C): (B, N, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
