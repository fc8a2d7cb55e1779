"""Decoding for every backbone kind: greedy, sampling (temperature, top-k, top-p) and beam search.

The searches are written once, against a `DecoderStep`: N rows of a backbone that, fed the newest token
of each row, give the logits of the next position, and whose rows can be reordered (repeated, dropped)
for beam search. One adapter per backbone kind:

- `CausalStep`, decoder-only (`zoo.models.protocols.CausalDecoder`): left-padded prompts, a KV cache
  when the backbone is an `zoo.models.protocols.IncrementalDecoder` and prompt plus new tokens fit its
  ``max_seq_len``; otherwise every step re-reads the last ``max_seq_len`` tokens (a sliding window).
- `Seq2SeqStep`, encoder-decoder (`zoo.models.protocols.EncoderDecoder`): the source is encoded once and
  the target decoded from the start token, with a cache (or re-read whole, ``use_cache=False``).

An `Ending` says when a row ends: end tokens, a maximum length per row and, for encoder-decoders,
banned ids and the end token forced at that length. `decode_one` (greedy or sampling) and
`decode_beams` (beam search) take a step and an ending. The entry points build both: `generate` for
decoder-only backbones (``num_beams > 1`` is beam search), and `greedy_search`, `sample_search` and
`beam_search` for encoder-decoders.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from zoo.errors import check_non_negative, check_positive, check_probability
from zoo.models.protocols import IncrementalDecoder, missing_members

_WARNED_NO_CACHE: set[type] = set()  # backbone classes already told they decode without a cache


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
    if force_eos is None:
        return logp
    only_eos = torch.full_like(logp[0], -math.inf)
    only_eos[eos_token_id] = 0.0
    return torch.where(force_eos[:, None], torch.where(only_eos == 0.0, logp, only_eos), logp)


@dataclass
class Ending:
    """When a row ends, for the searches.

    Attributes:
        limits: (N,) most new tokens per row, a final end token included.
        end_ids: Tokens that end a row; they are not part of its output.
        force_end: At its limit a row may only produce ``end_ids[0]`` (encoder-decoders: every
            hypothesis then ends with it). Otherwise a row simply stops at its limit.
        banned_ids: Tokens never produced.
    """

    limits: Tensor
    end_ids: tuple[int, ...] = ()
    force_end: bool = False
    banned_ids: tuple[int, ...] = ()
    _ends: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.force_end and not self.end_ids:
            raise ValueError("Ending: force_end needs an end token in end_ids")
        self._ends = torch.tensor(self.end_ids, dtype=torch.long, device=self.limits.device)

    @property
    def constrains(self) -> bool:
        """Whether some tokens are ruled out (banned or forced), so choices read log-probabilities."""
        return self.force_end or bool(self.banned_ids)

    def log_probs(self, logits: Tensor, t: int, limits: Tensor | None = None) -> Tensor:
        """`step_log_probs` of logits (N, V) at step ``t`` (0 for the first new token); ``limits`` (N,)
        replaces the rows' limits (beam search: one per beam)."""
        limits = self.limits if limits is None else limits
        return step_log_probs(
            logits,
            eos_token_id=self.end_ids[0] if self.force_end else None,
            banned_ids=self.banned_ids,
            force_eos=t + 1 >= limits if self.force_end else None,
        )

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
    for t in range(horizon):
        logp = ending.log_probs(logits, t)  # (N, V)
        if pick is None:
            best, nxt = logp.max(dim=-1)  # (N,), (N,)
        else:
            nxt = pick(logp if ending.constrains else logits)
            best = logp.gather(1, nxt[:, None]).squeeze(1)
        log_prob += best.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, fill)
        out.append(nxt)
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
        logp = ending.log_probs(logits, t, limits)  # (B*K, V)
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
    start at 0 at each row's first real token) when its ``forward`` accepts them, and ``cache``.

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
        if not self.use_cache:  # the window passes position ids only to a forward that takes them
            self.takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters
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
        return self.backbone(self.ids[:, window], attention_mask=mask, **extra)[:, -1]


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
) -> tuple[Seq2SeqStep, Ending]:
    """The step and ending every encoder-decoder search uses: at most ``floor(max_len_a *
    source_length + max_len_b)`` tokens per sentence, the end token included (capped by the backbone's
    positions); at that length only the end token is allowed, so every hypothesis is finished."""
    limits = max_lengths(src_ids, src_mask, a=max_len_a, b=max_len_b, limit=model.max_seq_len)
    step = Seq2SeqStep(model, src_ids, src_mask, bos_token_id=bos_token_id, max_new_tokens=int(limits.max()))
    return step, Ending(limits, end_ids=(eos_token_id,), force_end=True, banned_ids=tuple(banned_ids))


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
    """The most likely next token at every step, for a batch of sources (B, S) with padding mask (B, S)
    of an encoder-decoder; stops when every row has ended.

    Outputs are at most ``floor(max_len_a * source_length + max_len_b)`` tokens, ``eos_token_id``
    included (capped by ``model.max_seq_len``); at that length only ``eos_token_id`` is allowed.
    ``banned_ids`` (padding, the start token) are never produced.
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
) -> list[Hypothesis]:
    """The best of ``beam_size`` hypotheses kept per sentence (`decode_beams`), for a batch of sources
    (B, S) with padding mask (B, S) of an encoder-decoder; lengths and banned ids as in `greedy_search`.

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
    )
    return decode_beams(step, ending=ending, beam_size=beam_size, length_penalty=length_penalty)
