"""The `DecoderStep` adapters: `CausalStep` for decoder-only backbones (left-padded prompts, a KV cache or
a sliding window) and `Seq2SeqStep` for encoder-decoders (the source encoded once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from zoo.models.protocols import IncrementalDecoder, forward_takes, missing_members

_WARNED_NO_CACHE: set[type] = set()  # backbone classes already told they decode without a cache


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Left-pad prompts into ids (B, P) and attention mask (B, P) (1 at real tokens)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, each with at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        mask[i, width - len(p) :] = 1
    return ids, mask


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids that start at 0 at each row's first real token (left padding). (B, T) -> (B, T)."""
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


class CausalStep:
    """A decoder-only backbone as a `DecoderStep`, continuing left-padded prompts.

    With a KV cache (the backbone is an `zoo.models.protocols.IncrementalDecoder`, prompt plus new tokens
    fit its ``max_seq_len``, and ``use_cache``) the prompts are read once and each step feeds one token;
    the cache's ``reorder`` serves beam search. Otherwise every step re-reads the last ``max_seq_len``
    tokens (a sliding window, O(T²) for T tokens; a backbone that is no ``IncrementalDecoder`` is warned
    of it once).

    The backbone is called as ``backbone(input_ids, attention_mask=...)``, plus ``position_ids`` (which
    start at 0 at each row's first real token) when its ``forward`` accepts them, and ``cache``; and with
    ``last_only=True`` when its ``forward`` has that parameter (`zoo.nn.DecoderLM`: only the last
    position's logits, the only ones read after reading the prompts).

    Args:
        backbone: The decoder.
        ids: (N, P) prompts, left-padded (see `left_pad`).
        mask: (N, P) 1 at real tokens.
        max_new_tokens: Most tokens that will follow the prompts (sizes the cache).
        use_cache: ``False``: slide the window even when a cache would do (to compare the two).
    """

    def __init__(
        self, backbone: nn.Module, ids: Tensor, mask: Tensor, *, max_new_tokens: int, use_cache: bool = True
    ) -> None:
        self.backbone, self.ids, self.mask, self.max_new_tokens = backbone, ids, mask, max_new_tokens
        self.max_len: int | None = getattr(backbone, "max_seq_len", None)
        incremental = isinstance(backbone, IncrementalDecoder)
        if not incremental:
            _warn_no_cache(backbone)
        fits = self.max_len is not None and ids.shape[1] + max_new_tokens <= self.max_len
        self.use_cache = use_cache and incremental and fits
        # the window passes position ids only to an IncrementalDecoder, whose forward takes them
        self.takes_positions = incremental
        # a backbone that can compute the last position's logits alone (`zoo.nn.DecoderLM`) is asked to:
        # after a prompt of P tokens the output layer then multiplies 1 row per sequence, not P
        self.last_only = {"last_only": True} if forward_takes(backbone, "last_only") else {}
        self.cache: Any = None

    def start(self) -> Tensor:
        if not self.use_cache:
            return self._read_window()
        (B, P), n, device = self.ids.shape, self.max_new_tokens, self.ids.device
        self.cache = self.backbone.init_cache(B, P + n)
        # Every tensor a step needs is built here, once: a step is then only the forward pass.
        self.padded, self.prompt_len, self.fed = bool((self.mask == 0).any()), P, 0
        prompt_positions = positions_from_mask(self.mask)  # (B, P)
        if self.padded:  # position of each row's next token: its real length so far
            self.positions = self.mask.sum(dim=1, keepdim=True) + torch.arange(n, device=device)  # (B, n)
            self.mask = torch.cat([self.mask, self.mask.new_ones(B, n)], dim=1)  # (B, P + n)
        else:
            self.positions = torch.arange(P, P + n, device=device).expand(B, -1)  # (B, n)
        logits = self.backbone(
            self.ids,
            attention_mask=self.mask[:, :P] if self.padded else None,
            position_ids=prompt_positions,
            cache=self.cache,
            **self.last_only,
        )
        return logits[:, -1]

    def advance(self, tokens: Tensor) -> Tensor:
        if self.cache is None:
            self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
            return self._read_window()
        i, end = self.fed, self.prompt_len + self.fed + 1
        self.fed += 1
        logits = self.backbone(  # only the new token: the cache holds the rest
            tokens[:, None],
            attention_mask=self.mask[:, :end] if self.padded else None,
            position_ids=self.positions[:, i : i + 1],
            cache=self.cache,
        )
        return logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.mask = self.mask[index]
        if self.cache is None:
            self.ids = self.ids[index]
        else:
            self.cache.reorder(index)
            self.positions = self.positions[index]

    def _read_window(self) -> Tensor:
        """Logits (N, V) after re-reading the last ``max_seq_len`` tokens."""
        window = slice(-self.max_len, None) if self.max_len else slice(None)
        mask = self.mask[:, window]
        extra = {"position_ids": positions_from_mask(mask)} if self.takes_positions else {}
        return self.backbone(self.ids[:, window], attention_mask=mask, **extra, **self.last_only)[:, -1]


def _warn_no_cache(backbone: nn.Module) -> None:
    """Say once per backbone class that it decodes without a KV cache, naming what it lacks."""
    if type(backbone) in _WARNED_NO_CACHE:
        return
    _WARNED_NO_CACHE.add(type(backbone))
    missing = ", ".join(missing_members(backbone, IncrementalDecoder))
    rank_zero_warn(
        f"{type(backbone).__name__} has no {missing} (zoo.models.protocols.IncrementalDecoder): generation "
        "re-reads every token at each step, O(T²) in the generated length T instead of O(T) with a KV cache"
    )


class Seq2SeqStep:
    """An encoder-decoder backbone as a `DecoderStep`: one row per source, decoded from the start token.

    The sources are encoded once. With ``use_cache`` each step feeds one token and the memory's keys and
    values are computed on the first step only (the cache's ``reorder`` serves beam search); without,
    each step re-reads the whole target so far.

    Args:
        model: The encoder-decoder (`zoo.models.protocols.EncoderDecoder`).
        src_ids: (N, S) source ids.
        src_mask: (N, S) 1 at real source tokens; ``None`` when unpadded.
        bos_token_id: The decoder's start token.
        max_new_tokens: Most target tokens (sizes the cache).
        use_cache: ``False``: re-read the target at every step (to compare the two).
    """

    def __init__(
        self,
        model: Any,
        src_ids: Tensor,
        src_mask: Tensor | None,
        *,
        bos_token_id: int,
        max_new_tokens: int,
        use_cache: bool = True,
    ) -> None:
        self.model, self.src_ids, self.mask = model, src_ids, src_mask
        self.bos_token_id, self.max_new_tokens, self.use_cache = bos_token_id, max_new_tokens, use_cache
        self.cache: Any = None

    def start(self) -> Tensor:
        B, S = self.src_ids.shape
        self.memory = self.model.encode(self.src_ids, attention_mask=self.mask)  # (B, S, C)
        if self.use_cache:
            self.cache = self.model.init_cache(B, target_len=self.max_new_tokens, source_len=S)
        self.tokens = torch.full((B, 1), self.bos_token_id, dtype=torch.long, device=self.src_ids.device)
        return self._decode()

    def advance(self, tokens: Tensor) -> Tensor:
        new = tokens[:, None]  # (N, 1)
        self.tokens = new if self.cache is not None else torch.cat([self.tokens, new], dim=1)
        return self._decode()

    def reorder(self, index: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)
        self.memory, self.tokens = self.memory[index], self.tokens[index]  # (N', S, C), (N', T)
        self.mask = self.mask[index] if self.mask is not None else None

    def _decode(self) -> Tensor:
        """Logits (N, V) of the position after ``self.tokens`` (the new ones only, with a cache)."""
        return self.model.decode(self.tokens, self.memory, memory_mask=self.mask, cache=self.cache)[:, -1]


def max_lengths(src_ids: Tensor, src_mask: Tensor | None, *, a: float, b: int, limit: int) -> Tensor:
    """(B,) longest output per sentence, end token included: ``floor(a * source_length + b)`` in
    ``[1, limit]``."""
    lengths = (
        src_mask.sum(dim=1) if src_mask is not None else torch.full_like(src_ids[:, 0], src_ids.shape[1])
    )
    return (lengths.double() * a + b).floor().long().clamp(1, limit)
