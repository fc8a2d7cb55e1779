"""Greedy and beam-search decoding for encoder-decoder backbones, batched, with KV caches.

The backbone provides ``encode(src_ids, src_mask) -> memory``, ``decode(tgt_ids, memory, src_mask, *,
caches) -> logits`` and ``init_caches(batch_size, *, target_len, source_len) -> caches`` whose
``reorder(index)`` moves rows (see `zoo.models.seq2seq.Transformer`), and ``max_seq_len``.

Both searches produce at most ``max_len_a * source_length + max_len_b`` tokens per sentence, the end
token included (capped by the backbone's positions); at the last step only the end token is allowed,
so every hypothesis is finished. ``banned_ids`` (padding, the start token) are never produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Hypothesis(NamedTuple):
    """One decoded sentence.

    Attributes:
        tokens: Generated ids, without the start and end tokens.
        log_prob: Sum of the log-probabilities of the generated tokens, end token included.
    """

    tokens: list[int]
    log_prob: float


def normalized_score(log_prob: float, length: int, length_penalty: float) -> float:
    """The score beams are ranked by: ``log_prob / length ** length_penalty`` (fairseq's convention;
    ``length`` counts the end token). 0 ranks by probability alone, larger values favour longer output."""
    return log_prob / length**length_penalty


def max_lengths(src_ids: Tensor, src_mask: Tensor | None, *, a: float, b: int, limit: int) -> Tensor:
    """(B,) longest output per sentence, end token included: ``floor(a * source_length + b)`` in
    ``[1, limit]``."""
    lengths = (
        src_mask.sum(dim=1) if src_mask is not None else torch.full_like(src_ids[:, 0], src_ids.shape[1])
    )
    return (lengths.double() * a + b).floor().long().clamp(1, limit)


def step_log_probs(
    logits: Tensor, *, eos_token_id: int, banned_ids: Sequence[int], force_eos: Tensor
) -> Tensor:
    """Next-token log-probabilities (N, V) in float32 from logits (N, V): banned ids get ``-inf``, and rows
    where ``force_eos`` (N,) is set may only end."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if banned_ids:
        logp[:, list(banned_ids)] = -math.inf
    only_eos = torch.full_like(logp[0], -math.inf)
    only_eos[eos_token_id] = 0.0
    return torch.where(force_eos[:, None], torch.where(only_eos == 0.0, logp, only_eos), logp)


@torch.inference_mode()
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
) -> list[Hypothesis]:
    """The most likely next token at every step, for a batch of sources (B, S); stops when every row
    has ended."""
    B, S = src_ids.shape
    memory = model.encode(src_ids, attention_mask=src_mask)  # (B, S, C)
    limits = max_lengths(src_ids, src_mask, a=max_len_a, b=max_len_b, limit=model.max_seq_len)
    caches = model.init_cache(B, target_len=int(limits.max()), source_len=S)
    step = torch.full((B, 1), bos_token_id, dtype=torch.long, device=src_ids.device)
    log_prob = torch.zeros(B, dtype=torch.float32, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    out = []
    for t in range(int(limits.max())):
        logits = model.decode(step, memory, memory_mask=src_mask, cache=caches)[:, -1]  # (B, V)
        logp = step_log_probs(
            logits, eos_token_id=eos_token_id, banned_ids=banned_ids, force_eos=t + 1 >= limits
        )
        best, nxt = logp.max(dim=-1)  # (B,), (B,)
        log_prob += best.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, eos_token_id)
        out.append(nxt)
        done |= nxt == eos_token_id
        if bool(done.all()):
            break
        step = nxt[:, None]
    rows = torch.stack(out, dim=1).tolist()  # (B, T)
    return [Hypothesis(row[: row.index(eos_token_id)], lp) for row, lp in zip(rows, log_prob.tolist())]


@torch.inference_mode()
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
) -> list[Hypothesis]:
    """The best of ``beam_size`` hypotheses kept per sentence, for a batch of sources (B, S).

    Each step extends every live beam by every token and keeps, per sentence, the ``2 * beam_size`` best
    candidates: those ending among the first ``beam_size`` are finished, the first ``beam_size`` others
    live on. A sentence is done when it has ``beam_size`` finished hypotheses, when no live beam can
    still beat its best finished one (under ``length_penalty``, see `normalized_score`) or at its
    maximum length; the search stops when every sentence is done. Returns the best finished hypothesis
    of each sentence by normalized score.
    """
    B, S = src_ids.shape
    K, device = beam_size, src_ids.device
    if K < 1:
        raise ValueError(f"beam_size must be at least 1, got {K}")
    limits = max_lengths(src_ids, src_mask, a=max_len_a, b=max_len_b, limit=model.max_seq_len)
    memory = model.encode(src_ids, attention_mask=src_mask)  # (B, S, C)
    caches = model.init_cache(B, target_len=int(limits.max()), source_len=S)
    bos = torch.full((B, 1), bos_token_id, dtype=torch.long, device=device)
    first = model.decode(bos, memory, memory_mask=src_mask, cache=caches)[
        :, -1
    ]  # (B, V); memory keys/values cached
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): the sentence of each beam row
    caches.reorder(rows)  # K copies of each sentence's caches
    memory, mask = memory[rows], src_mask[rows] if src_mask is not None else None  # (B*K, S, C), (B*K, S)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    tokens = bos[rows]  # (B*K, 1)
    search = _Finished(B, K, length_penalty, limits.tolist())
    for t in range(int(limits.max())):
        logits = (
            first[rows]
            if t == 0
            else model.decode(tokens[:, -1:], memory, memory_mask=mask, cache=caches)[:, -1]
        )
        logp = step_log_probs(
            logits, eos_token_id=eos_token_id, banned_ids=banned_ids, force_eos=t + 1 >= limits[rows]
        )
        V = logp.shape[-1]
        candidates = (scores.view(B * K, 1) + logp).view(B, K * V)
        top, index = candidates.topk(2 * K, dim=1)  # (B, 2K) each, best first
        beam, token = index // V, index % V
        search.add(t, top, beam, token, tokens, eos_token_id)
        # the first K candidates that do not end live on (a beam has one end candidate, so K remain)
        order = (token == eos_token_id).long() * 2 * K + torch.arange(2 * K, device=device)  # (B, 2K)
        keep = order.argsort(dim=1)[:, :K]  # (B, K)
        scores = top.gather(1, keep).masked_fill(search.done_mask(scores.device)[:, None], -math.inf)
        search.update_done(t, scores)
        if search.all_done:
            break
        origin = (torch.arange(B, device=device)[:, None] * K + beam.gather(1, keep)).view(-1)  # (B*K,)
        caches.reorder(origin)
        tokens = torch.cat([tokens[origin], token.gather(1, keep).view(-1, 1)], dim=1)  # (B*K, t+2)
    return search.best()


class _Finished:
    """Per-sentence bookkeeping of beam search: finished hypotheses and which sentences are done."""

    def __init__(self, batch_size: int, beam_size: int, length_penalty: float, limits: list[int]) -> None:
        self.K, self.alpha, self.limits = beam_size, length_penalty, limits
        self.hyps: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def done_mask(self, device: torch.device) -> Tensor:
        return torch.tensor(self.done, dtype=torch.bool, device=device)

    def add(
        self, t: int, top: Tensor, beam: Tensor, token: Tensor, tokens: Tensor, eos_token_id: int
    ) -> None:
        """Finish the candidates that end among each sentence's first K."""
        ends = (token[:, : self.K] == eos_token_id) & (top[:, : self.K] > -math.inf)  # (B, K)
        for b, j in ends.nonzero().tolist():
            if self.done[b]:
                continue
            log_prob = float(top[b, j])
            prefix = tokens[b * self.K + int(beam[b, j]), 1:].tolist()
            self.hyps[b].append((normalized_score(log_prob, t + 1, self.alpha), Hypothesis(prefix, log_prob)))

    def update_done(self, t: int, live: Tensor) -> None:
        """Mark sentences done after step ``t``; ``live`` (B, K) are the scores of the live beams."""
        best_live = live.max(dim=1).values.tolist()
        for b, hyps in enumerate(self.hyps):
            if self.done[b]:
                continue
            at_limit = t + 1 >= self.limits[b] or best_live[b] == -math.inf
            self.done[b] = at_limit or len(hyps) >= self.K or self._unbeatable(b, t, best_live[b])

    def _unbeatable(self, b: int, t: int, best_live: float) -> bool:
        # the best a live beam can reach: no further cost, at the length the penalty favours most
        if not self.hyps[b]:
            return False
        length = self.limits[b] if self.alpha >= 0 else t + 2
        return max(score for score, _ in self.hyps[b]) >= normalized_score(best_live, length, self.alpha)

    def best(self) -> list[Hypothesis]:
        return [max(hyps, key=lambda h: h[0])[1] for hyps in self.hyps]
