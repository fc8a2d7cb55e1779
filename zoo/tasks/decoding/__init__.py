"""Decoding for every backbone kind: greedy, sampling (temperature, top-k, top-p) and beam search.

The searches are written once, against a `DecoderStep`: N rows of a backbone that, fed the newest token
of each row, give the logits of the next position, and whose rows can be reordered (repeated, dropped)
for beam search. One adapter per backbone kind:

- `CausalStep`, decoder-only (`zoo.models.protocols.CausalDecoder`): left-padded prompts, a KV cache
  when the backbone is an `zoo.models.protocols.IncrementalDecoder` and prompt plus new tokens fit its
  ``max_seq_len``; otherwise every step re-reads the last ``max_seq_len`` tokens (a sliding window).
- `Seq2SeqStep`, encoder-decoder (`zoo.models.protocols.EncoderDecoder`): the source is encoded once and
  the target decoded from the start token, with a cache (or re-read whole, ``use_cache=False``).

An `Ending` says when a row ends and what it may produce: end tokens, a maximum length per row and, for
encoder-decoders, banned ids, the end token forced at that length, a minimum length and no repeated
n-grams (`block_repeated_ngrams`). `decode_one` (greedy or sampling) and
`decode_beams` (beam search) take a step and an ending. The entry points build both: `generate` for
decoder-only backbones (``num_beams > 1`` is beam search), and `greedy_search`, `sample_search` and
`beam_search` for encoder-decoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from zoo.tasks.decoding.search import (
    DecoderStep,
    Ending,
    Hypothesis,
    block_repeated_ngrams,
    check_sampling,
    decode_beams,
    decode_one,
    filter_logits,
    normalized_score,
    pick_next,
    step_log_probs,
)
from zoo.tasks.decoding.steps import CausalStep, Seq2SeqStep, left_pad, max_lengths, positions_from_mask

__all__ = [
    "CausalStep",
    "DecoderStep",
    "Ending",
    "Hypothesis",
    "Seq2SeqStep",
    "beam_search",
    "block_repeated_ngrams",
    "check_sampling",
    "decode_beams",
    "decode_one",
    "filter_logits",
    "generate",
    "greedy_search",
    "left_pad",
    "max_lengths",
    "normalized_score",
    "pick_next",
    "positions_from_mask",
    "sample_search",
    "step_log_probs",
]


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
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Continue each prompt (token ids) of a decoder-only backbone by up to ``max_new_tokens`` tokens;
    return only the new tokens.

    A row stops at its first stop token (which is not returned). With ``num_beams == 1`` each token is
    sampled (greedy when ``temperature == 0``, `decode_one`); with ``num_beams > 1`` the result is each
    prompt's best continuation by beam search (`decode_beams`), ranked by ``log_prob / length **
    length_penalty`` with ``length`` counting a final stop token. Beam search does not sample:
    ``temperature``, ``top_k``, ``top_p`` and ``generator`` are then unused. Prompts of any lengths are
    left-padded and read through `CausalStep`: a KV cache when the backbone has one and everything fits
    its ``max_seq_len``, otherwise a sliding window.

    Raises:
        ValueError: A prompt is empty or longer than the context, or a decoding argument is out of range
            (see `check_sampling`), before any decoding.
    """
    check_sampling(
        "generate",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_beams=num_beams,
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
    step = CausalStep(backbone, ids, mask, max_new_tokens=max_new_tokens)
    limits = torch.full((len(prompts),), max_new_tokens, device=device)
    ending = Ending(limits, end_ids=tuple(dict.fromkeys(int(t) for t in stop_tokens)))
    if num_beams > 1:
        hyps = decode_beams(step, ending=ending, beam_size=num_beams, length_penalty=length_penalty)
    else:
        pick = partial(pick_next, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        hyps = decode_one(step, ending=ending, pick=pick)
    return [h.tokens for h in hyps]


def _seq2seq(
    model: Any,
    src_ids: Tensor,
    src_mask: Tensor | None,
    *,
    bos_token_id: int,
    eos_token_id: int,
    banned_ids: Sequence[int],
    max_len_a: float,
    max_len_b: int,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
) -> tuple[Seq2SeqStep, Ending]:
    """The step and ending every encoder-decoder search uses: at most ``floor(max_len_a *
    source_length + max_len_b)`` tokens per sentence, the end token included (capped by the backbone's
    positions); at that length only the end token is allowed, so every hypothesis is finished. Before
    ``min_len`` tokens the end token is not allowed; no n-gram of ``no_repeat_ngram_size`` tokens repeats."""
    limits = max_lengths(src_ids, src_mask, a=max_len_a, b=max_len_b, limit=model.max_seq_len)
    step = Seq2SeqStep(model, src_ids, src_mask, bos_token_id=bos_token_id, max_new_tokens=int(limits.max()))
    ending = Ending(
        limits,
        end_ids=(eos_token_id,),
        force_end=True,
        banned_ids=tuple(banned_ids),
        min_len=min_len,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    return step, ending


def greedy_search(
    model: Any,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_token_id: int,
    eos_token_id: int,
    banned_ids: Sequence[int] = (),
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
) -> list[Hypothesis]:
    """The most likely next token at every step, for a batch of sources (B, S) with padding mask (B, S)
    of an encoder-decoder; stops when every row has ended.

    Outputs are at most ``floor(max_len_a * source_length + max_len_b)`` tokens, ``eos_token_id``
    included (capped by ``model.max_seq_len``); at that length only ``eos_token_id`` is allowed.
    ``banned_ids`` (padding, the start token) are never produced. The end token is not allowed before
    ``min_len`` tokens (its forced end at the maximum length still wins), and no n-gram of
    ``no_repeat_ngram_size`` tokens (0: off) occurs twice in an output (`block_repeated_ngrams`).
    """
    step, ending = _seq2seq(
        model,
        src_ids,
        src_mask,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        banned_ids=banned_ids,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        min_len=min_len,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    return decode_one(step, ending=ending)


def sample_search(
    model: Any,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_token_id: int,
    eos_token_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    banned_ids: Sequence[int] = (),
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
) -> list[Hypothesis]:
    """`greedy_search` that samples each token instead (``temperature``, ``top_k``, ``top_p`` as in
    `pick_next`; ``temperature == 0`` is greedy) from the log-probabilities with banned and forced
    tokens applied.

    Raises:
        ValueError: A sampling argument is out of range (see `check_sampling`).
    """
    check_sampling("sample_search", temperature=temperature, top_k=top_k, top_p=top_p)
    step, ending = _seq2seq(
        model,
        src_ids,
        src_mask,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        banned_ids=banned_ids,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        min_len=min_len,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    pick = partial(pick_next, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return decode_one(step, ending=ending, pick=pick)


def beam_search(
    model: Any,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_token_id: int,
    eos_token_id: int,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    banned_ids: Sequence[int] = (),
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
) -> list[Hypothesis]:
    """The best of ``beam_size`` hypotheses kept per sentence (`decode_beams`), for a batch of sources
    (B, S) with padding mask (B, S) of an encoder-decoder; lengths, banned ids, ``min_len`` and
    ``no_repeat_ngram_size`` as in `greedy_search`.

    Raises:
        ValueError: ``beam_size`` below 1.
    """
    step, ending = _seq2seq(
        model,
        src_ids,
        src_mask,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        banned_ids=banned_ids,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        min_len=min_len,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    return decode_beams(step, ending=ending, beam_size=beam_size, length_penalty=length_penalty)
