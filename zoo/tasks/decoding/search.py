"""The searches, written once against a `DecoderStep`: greedy or sampling (`decode_one`) and beam search
(`decode_beams`), with an `Ending` saying when a row ends, and the logit filters they share."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from zoo.errors import check_non_negative, check_positive, check_probability


class Hypothesis(NamedTuple):
    """One decoded sequence.

    Attributes:
        tokens: Generated ids, without the prompt or start token and without the end token.
        log_prob: Sum of the log-probabilities of the generated tokens, end token included.
    """

    tokens: list[int]
    log_prob: float


class DecoderStep(Protocol):
    """A backbone seen one position at a time, over N rows: all the searches call."""

    def start(self) -> Tensor:
        """Make the cache for the rows, read what comes before the first new token (the prompts, the
        start token); return the logits (N, V) of the first new position."""
        ...

    def advance(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (N,) to the rows; return the logits (N, V) of the position after them."""
        ...

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` continues row ``index[i]``: (N',) row ids that may repeat rows and change N."""
        ...


def check_sampling(
    owner: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> None:
    """The decoding arguments every entry point checks (``None`` passes).

    Raises:
        ValueError: Names ``owner`` and the argument: ``max_new_tokens``, ``top_k`` or ``num_beams``
            below 1, a negative ``temperature``, ``top_p`` outside (0, 1].
    """
    check_positive(owner, max_new_tokens=max_new_tokens, top_k=top_k, num_beams=num_beams)
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


def normalized_score(log_prob: float, length: int, length_penalty: float) -> float:
    """The score beams are ranked by: ``log_prob / length ** length_penalty`` (fairseq's convention;
    ``length`` counts the end token). 0 ranks by probability alone, larger values favour longer output."""
    return log_prob / length**length_penalty


def step_log_probs(
    logits: Tensor,
    *,
    eos_token_id: int | None = None,
    banned_ids: Sequence[int] = (),
    force_eos: Tensor | None = None,
) -> Tensor:
    """Next-token log-probabilities (N, V) in float32 from logits (N, V): banned ids get ``-inf``, and rows
    where ``force_eos`` (N,) is set may only produce ``eos_token_id``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if banned_ids:
        logp[:, list(banned_ids)] = -math.inf
    return logp if force_eos is None else _only_eos(logp, logp, eos_token_id, force_eos)


def _only_eos(logp: Tensor, raw: Tensor, eos_token_id: int | None, rows: Tensor) -> Tensor:
    """``logp`` (N, V) where in ``rows`` (N,) only ``eos_token_id`` is left, at its ``raw`` (N, V) value."""
    only_eos = torch.full_like(logp, -math.inf)  # (N, V)
    only_eos[:, eos_token_id] = raw[:, eos_token_id]
    return torch.where(rows[:, None], only_eos, logp)


def block_repeated_ngrams(logp: Tensor, history: Tensor, n: int) -> Tensor:
    """``logp`` (N, V) with ``-inf`` at every token that would complete an ``n``-gram already in its row's
    ``history`` (N, t) (the tokens generated so far): no ``n``-gram then occurs twice in an output.
    ``n < 1``, or a history too short to hold an n-gram, changes nothing."""
    t = history.shape[1]
    if n < 1 or t < n:
        return logp
    if n == 1:
        seen, last = history, torch.ones_like(history, dtype=torch.bool)  # (N, t): every token so far
    else:
        windows = history.unfold(1, n, 1)  # (N, W, n): every n-gram so far
        prefix = history[:, t - n + 1 :]  # (N, n-1): the n-gram the next token would complete
        seen, last = windows[..., -1], (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)  # (N, W)
    penalty = torch.where(last, -math.inf, 0.0).to(logp.dtype)  # (N, W); a token may be listed twice
    blocked = torch.zeros_like(logp).scatter_reduce(1, seen, penalty, reduce="amin")  # (N, V)
    return logp + blocked


@dataclass
class Ending:
    """When a row ends, and which tokens it may produce on the way, for the searches.

    Attributes:
        limits: (N,) most new tokens per row, a final end token included.
        end_ids: Tokens that end a row; they are not part of its output.
        force_end: At its limit a row may only produce ``end_ids[0]`` (encoder-decoders: every
            hypothesis then ends with it). Otherwise a row simply stops at its limit.
        banned_ids: Tokens never produced.
        min_len: No end token before a row has this many tokens (the end token not counted); the forced
            end at a row's limit still wins.
        no_repeat_ngram_size: No n-gram of this many tokens occurs twice in a row's output (0: off;
            `block_repeated_ngrams`).
    """

    limits: Tensor
    end_ids: tuple[int, ...] = ()
    force_end: bool = False
    banned_ids: tuple[int, ...] = ()
    min_len: int = 0
    no_repeat_ngram_size: int = 0
    _ends: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.force_end and not self.end_ids:
            raise ValueError("Ending: force_end needs an end token in end_ids")
        check_non_negative("Ending", min_len=self.min_len, no_repeat_ngram_size=self.no_repeat_ngram_size)
        self._ends = torch.tensor(self.end_ids, dtype=torch.long, device=self.limits.device)

    @property
    def constrains(self) -> bool:
        """Whether some tokens are ruled out (banned or forced), so choices read log-probabilities."""
        return self.force_end or bool(self.banned_ids) or self.min_len > 0 or self.no_repeat_ngram_size > 0

    def log_probs(
        self, logits: Tensor, t: int, limits: Tensor | None = None, history: Tensor | None = None
    ) -> Tensor:
        """`step_log_probs` of logits (N, V) at step ``t`` (0 for the first new token), with the end tokens
        ruled out before ``min_len`` and repeated n-grams of ``history`` (N, t), the rows' tokens so far,
        blocked; ``limits`` (N,) replaces the rows' limits (beam search: one per beam)."""
        limits = self.limits if limits is None else limits
        raw = step_log_probs(logits, banned_ids=self.banned_ids)  # (N, V)
        logp = raw
        if self.no_repeat_ngram_size and history is not None:
            logp = block_repeated_ngrams(logp, history, self.no_repeat_ngram_size)
        if t < self.min_len and self.end_ids:
            logp = logp.index_fill(1, self._ends, -math.inf)
        if not self.force_end:
            return logp
        return _only_eos(logp, raw, self.end_ids[0], t + 1 >= limits)

    def is_end(self, tokens: Tensor) -> Tensor:
        """Whether each token (any shape) is an end token."""
        return torch.isin(tokens, self._ends)


@torch.inference_mode()
def decode_one(
    step: DecoderStep, *, ending: Ending, pick: Callable[[Tensor], Tensor] | None = None
) -> list[Hypothesis]:
    """One continuation per row, token by token: greedy or sampled.

    Args:
        step: The rows to continue.
        ending: When each row ends; decoding stops when every row has ended or at the longest limit.
        pick: Chooses the next ids (N,) from scores (N, V): the raw logits, or the log-probabilities when
            ``ending`` bans or forces tokens (see `pick_next`). ``None``: the most likely token.
    """
    logits = step.start()  # (N, V)
    N, device = logits.shape[0], logits.device
    done = torch.zeros(N, dtype=torch.bool, device=device)
    log_prob = torch.zeros(N, dtype=torch.float32, device=device)
    fill, horizon, out = (ending.end_ids or (0,))[0], int(ending.limits.max()), []
    history = torch.zeros((N, 0), dtype=torch.long, device=device)  # (N, t): each row's tokens so far
    for t in range(horizon):
        logp = ending.log_probs(logits, t, history=history if ending.no_repeat_ngram_size else None)
        if pick is None:
            best, nxt = logp.max(dim=-1)  # (N,), (N,)
        else:
            nxt = pick(logp if ending.constrains else logits)
            best = logp.gather(1, nxt[:, None]).squeeze(1)
        log_prob += best.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, fill)
        out.append(nxt)
        if ending.no_repeat_ngram_size:
            history = torch.cat([history, nxt[:, None]], dim=1)  # (N, t+1)
        done |= ending.is_end(nxt) | (t + 1 >= ending.limits)
        # without end tokens no row ends before the last step: no need to wait for the device
        if ending.end_ids and bool(done.all()):
            break
        if t + 1 < horizon:
            logits = step.advance(nxt)
    rows, limits = torch.stack(out, dim=1).tolist(), ending.limits.tolist()  # (N, T), (N,)
    return [
        Hypothesis(_until_end(row[:limit], ending.end_ids), lp)
        for row, limit, lp in zip(rows, limits, log_prob.tolist())
    ]


def _until_end(tokens: list[int], end_ids: Sequence[int]) -> list[int]:
    ends = set(end_ids)
    return tokens[: next((i for i, tok in enumerate(tokens) if tok in ends), len(tokens))]


@torch.inference_mode()
def decode_beams(
    step: DecoderStep, *, ending: Ending, beam_size: int, length_penalty: float = 1.0
) -> list[Hypothesis]:
    """The best of ``beam_size`` hypotheses kept per row.

    The first position is read once per row, then the rows are copied to ``beam_size`` beams. Each step
    extends every live beam by every token and keeps, per row, the ``beam_size * (1 + E)`` best
    candidates (E end tokens): those that end (or reach the row's limit) among the first ``beam_size``
    are finished, the first ``beam_size`` others live on. A row is done when it has ``beam_size``
    finished hypotheses, when no live beam can still beat its best finished one (under
    ``length_penalty``, see `normalized_score`) or at its limit; the search stops when every row is
    done. Returns the best finished hypothesis of each row by normalized score.

    Raises:
        ValueError: ``beam_size`` below 1.
    """
    K = beam_size
    if K < 1:
        raise ValueError(f"beam_size must be at least 1, got {K}")
    first = step.start()  # (B, V)
    (B, V), device = first.shape, first.device
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): the row of each beam
    step.reorder(rows)  # K copies of each row
    limits, C = ending.limits[rows], min(K * (1 + len(ending.end_ids)), K * V)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0  # one live beam per row at the start
    tokens = torch.zeros((B * K, 0), dtype=torch.long, device=device)  # (B*K, t): each beam's tokens
    search = _Finished(B, K, length_penalty, ending.limits.tolist())
    for t in range(int(ending.limits.max())):
        logits = first[rows] if t == 0 else step.advance(tokens[:, -1])
        logp = ending.log_probs(logits, t, limits, history=tokens)  # (B*K, V)
        candidates = (scores.view(B * K, 1) + logp).view(B, K * V)
        top, index = candidates.topk(C, dim=1)  # (B, C) each, best first
        beam, token = index // V, index % V
        ends = ending.is_end(token)  # (B, C)
        search.add(t, top, beam, token, tokens, ends)
        # the first K candidates that do not end live on (a beam has at most E end candidates)
        keep = (ends.long() * C + torch.arange(C, device=device)).argsort(dim=1)[:, :K]  # (B, K)
        scores = top.gather(1, keep).masked_fill(search.done_mask(device)[:, None], -math.inf)
        search.update_done(t, scores)
        if search.all_done:
            break
        origin = (torch.arange(B, device=device)[:, None] * K + beam.gather(1, keep)).view(-1)  # (B*K,)
        step.reorder(origin)
        tokens = torch.cat([tokens[origin], token.gather(1, keep).view(-1, 1)], dim=1)  # (B*K, t+1)
    return search.best()


class _Finished:
    """Per-row bookkeeping of beam search: finished hypotheses and which rows are done."""

    def __init__(self, batch_size: int, beam_size: int, length_penalty: float, limits: list[int]) -> None:
        self.K, self.alpha, self.limits = beam_size, length_penalty, limits
        self.hyps: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def done_mask(self, device: torch.device) -> Tensor:
        return torch.tensor(self.done, dtype=torch.bool, device=device)

    def add(self, t: int, top: Tensor, beam: Tensor, token: Tensor, tokens: Tensor, ends: Tensor) -> None:
        """Finish each row's candidates among its first K that end (``ends``, (B, C)) or reach its limit;
        ``tokens`` (B*K, t) are the beams' tokens so far."""
        at_limit = torch.tensor([t + 1 >= n for n in self.limits], device=top.device)  # (B,)
        finished = (ends[:, : self.K] | at_limit[:, None]) & (top[:, : self.K] > -math.inf)  # (B, K)
        for b, j in finished.nonzero().tolist():
            if self.done[b]:
                continue
            log_prob = float(top[b, j])
            prefix = tokens[b * self.K + int(beam[b, j])].tolist()
            if not ends[b, j]:  # stopped by the limit: the last token is output
                prefix.append(int(token[b, j]))
            self.hyps[b].append((normalized_score(log_prob, t + 1, self.alpha), Hypothesis(prefix, log_prob)))

    def update_done(self, t: int, live: Tensor) -> None:
        """Mark rows done after step ``t``; ``live`` (B, K) are the scores of the live beams."""
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
