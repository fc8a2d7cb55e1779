"""Autoregressive sampling for decoder-only backbones: batched prompts, KV cache, stop tokens."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from zoo.errors import check_non_negative, check_positive, check_probability
from zoo.models.protocols import IncrementalDecoder, missing_members

_WARNED_NO_CACHE: set[type] = set()  # backbone classes already told they decode without a cache


def check_sampling(
    owner: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    """The sampling arguments every entry point checks (``None`` passes).

    Raises:
        ValueError: Names ``owner`` and the argument: ``max_new_tokens`` or ``top_k`` below 1, a negative
            ``temperature``, ``top_p`` outside (0, 1].
    """
    check_positive(owner, max_new_tokens=max_new_tokens, top_k=top_k)
    check_non_negative(owner, temperature=temperature)
    check_probability(owner, open_low=True, top_p=top_p)


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to ``-inf``. ``logits``: (B, V).

    Raises:
        ValueError: ``top_k`` below 1, or ``top_p`` outside (0, 1].
    """
    check_sampling("filter_logits", top_k=top_k, top_p=top_p)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the best one always stays
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_next(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V); ``temperature == 0`` is greedy."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


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


@torch.inference_mode()
def generate(
    backbone: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; return only the new tokens.

    A row stops at its first stop token (which is not returned). A prompt longer than the backbone's
    ``max_seq_len`` is an error. When prompt plus new tokens fit the backbone's ``max_seq_len`` and it
    offers ``init_cache`` (a `zoo.models.protocols.IncrementalDecoder`), decoding is incremental (each
    step feeds one token); otherwise every step re-reads the last ``max_seq_len`` tokens (a sliding
    window, O(T²) for T tokens; a backbone that is no ``IncrementalDecoder`` is warned of it once).

    The backbone is called as ``backbone(input_ids, attention_mask=...)``, plus ``position_ids`` when its
    ``forward`` accepts them (needed for correct positions under left padding) and ``cache``.

    Raises:
        ValueError: A prompt is empty or longer than the context, or a sampling argument is out of range
            (see `check_sampling`), before any decoding.
    """
    check_sampling(
        "generate", max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
    )
    device = next(backbone.parameters()).device
    max_len = getattr(backbone, "max_seq_len", None)
    for i, prompt in enumerate(prompts):
        if max_len is not None and len(prompt) > max_len:
            raise ValueError(
                f"prompt {i} has {len(prompt)} tokens, more than the model's context of max_seq_len="
                f"{max_len}; shorten it (generation may run past the context, the prompt may not)"
            )
    ids, mask = left_pad(prompts, pad_token_id=0, device=device)
    B, P = ids.shape
    incremental = isinstance(backbone, IncrementalDecoder)
    if not incremental:
        _warn_no_cache(backbone)
    use_cache = incremental and max_len is not None and P + max_new_tokens <= max_len
    stop = torch.as_tensor(list(stop_tokens), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out = ids.new_zeros(B, max_new_tokens)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    if use_cache:
        caches = backbone.init_cache(B, P + max_new_tokens)
        # Every tensor a step needs is built here, once: a step is then only the forward pass.
        padded = bool((mask == 0).any())
        full_mask = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1) if padded else None
        if padded:  # position of each row's next token: its real length so far
            step_positions = mask.sum(dim=1, keepdim=True) + torch.arange(max_new_tokens, device=device)
        else:
            step_positions = torch.arange(P, P + max_new_tokens, device=device).expand(B, -1)
        logits = backbone(
            ids,
            attention_mask=full_mask[:, :P] if padded else None,
            position_ids=positions_from_mask(mask),
            cache=caches,
        )

        def advance(i: int, nxt: Tensor) -> Tensor:  # feed only the new token; the cache holds the rest
            return backbone(
                nxt[:, None],
                attention_mask=full_mask[:, : P + i + 1] if padded else None,
                position_ids=step_positions[:, i : i + 1],
                cache=caches,
            )
    else:
        takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters
        window = slice(-max_len, None) if max_len else slice(None)

        def read_window() -> Tensor:  # re-read the last max_seq_len tokens
            w_mask = mask[:, window]
            extra = {"position_ids": positions_from_mask(w_mask)} if takes_positions else {}
            return backbone(ids[:, window], attention_mask=w_mask, **extra)

        def advance(i: int, nxt: Tensor) -> Tensor:
            nonlocal ids, mask
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            return read_window()

        logits = read_window()
    steps = 0
    for i in range(max_new_tokens):
        nxt = pick_next(logits[:, -1], **sample).masked_fill_(done, 0)
        out[:, i] = nxt
        steps = i + 1
        if stop.numel():
            done |= torch.isin(nxt, stop)
            if bool(done.all()):
                break
        if i + 1 < max_new_tokens:
            logits = advance(i, nxt)
    return _trim(out[:, :steps], stop_tokens)


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


def _trim(new: Tensor, stop_tokens: Sequence[int]) -> list[list[int]]:
    result = []
    stops = set(stop_tokens)
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result
