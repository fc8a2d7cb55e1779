"""Decoding: beam size 1 is greedy, a wide beam is exact, batching and padding change nothing."""

from __future__ import annotations

import itertools

import pytest
import torch

from zoo.models.seq2seq import Transformer
from zoo.tasks.beam_search import beam_search, greedy_search, normalized_score, step_log_probs

PAD, BOS, EOS = 0, 1, 2
SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, banned_ids=(PAD, BOS))


def _model(vocab_size: int, *, sharpen: float = 1.0) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(
        vocab_size=vocab_size,
        max_seq_len=24,
        embed_dim=32,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        hidden_dim=64,
        dropout=0.0,
    ).eval()
    with torch.no_grad():  # peakier next-token distributions make beams disagree with greedy more often
        model.lm_head.weight.mul_(sharpen)
    return model


def _sources(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randint(3, vocab_size, (6, 8), generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([8, 5, 1, 7, 3, 8])
    mask = (torch.arange(8)[None] < lengths[:, None]).long()
    return src.masked_fill(mask == 0, PAD), mask


@torch.no_grad()
def _sequence_log_prob(model, src, tokens: list[int], max_len: int) -> float:
    """Teacher-forced log-probability of ``tokens + [EOS]``, under the same rules as the searches."""
    tgt = torch.tensor([[BOS, *tokens]])
    logits = model(src, tgt)[0]  # (T, V)
    force = torch.arange(1, len(tokens) + 2) >= max_len
    logp = step_log_probs(logits, eos_token_id=EOS, banned_ids=(PAD, BOS), force_eos=force)
    return float(logp[torch.arange(len(tokens) + 1), torch.tensor([*tokens, EOS])].sum())


def test_beam_size_one_is_greedy():
    model = _model(30, sharpen=3.0)
    src, mask = _sources(30)
    greedy = greedy_search(model, src, mask, max_len_a=1.0, max_len_b=3, **SPECIAL)
    beam = beam_search(model, src, mask, beam_size=1, max_len_a=1.0, max_len_b=3, **SPECIAL)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.log_prob for h in beam] == pytest.approx([h.log_prob for h in greedy], abs=1e-5)
    assert {len(h.tokens) for h in greedy} != {0}  # the model does produce something


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty):
    vocab, max_len = 6, 4  # 3 real tokens, up to 3 of them then the end: 40 possible outputs
    model = _model(vocab, sharpen=4.0)
    src, _ = _sources(vocab)
    for i in range(3):
        source = src[i : i + 1]
        scored = []
        for n in range(max_len):
            for seq in itertools.product(range(3, vocab), repeat=n):
                log_prob = _sequence_log_prob(model, source, list(seq), max_len)
                scored.append((normalized_score(log_prob, n + 1, length_penalty), list(seq), log_prob))
        best_score, best_seq, best_log_prob = max(scored)
        [hyp] = beam_search(
            model, source, beam_size=27, length_penalty=length_penalty, max_len_b=max_len, **SPECIAL
        )
        assert hyp.tokens == best_seq
        assert hyp.log_prob == pytest.approx(best_log_prob, abs=1e-5)
        assert normalized_score(hyp.log_prob, len(hyp.tokens) + 1, length_penalty) == pytest.approx(
            best_score
        )


def test_a_beam_beats_greedy_somewhere():
    model = _model(30, sharpen=3.0)
    src, mask = _sources(30)
    greedy = greedy_search(model, src, mask, max_len_a=1.0, max_len_b=3, **SPECIAL)
    beam = beam_search(
        model, src, mask, beam_size=4, length_penalty=0.0, max_len_a=1.0, max_len_b=3, **SPECIAL
    )
    assert all(b.log_prob >= g.log_prob - 1e-5 for b, g in zip(beam, greedy))
    assert any(b.log_prob > g.log_prob + 1e-3 for b, g in zip(beam, greedy))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_padded_decoding_equals_one_at_a_time(beam_size):
    model = _model(30, sharpen=3.0)
    src, mask = _sources(30)
    batched = beam_search(model, src, mask, beam_size=beam_size, max_len_a=1.5, max_len_b=2, **SPECIAL)
    for i, hyp in enumerate(batched):
        n = int(mask[i].sum())
        [alone] = beam_search(
            model, src[i : i + 1, :n], beam_size=beam_size, max_len_a=1.5, max_len_b=2, **SPECIAL
        )
        assert hyp.tokens == alone.tokens
        assert hyp.log_prob == pytest.approx(alone.log_prob, abs=1e-4)


def test_output_lengths_follow_the_source():
    model = _model(30)
    src, mask = _sources(30)
    with torch.no_grad():  # make the end token impossible until it is forced
        model.lm_head.weight[EOS] = -100 * model.lm_head.weight.abs().max()
    for search in (greedy_search, beam_search):
        hyps = search(model, src, mask, max_len_a=0.5, max_len_b=2, **SPECIAL)
        expected = [int(0.5 * n + 2) - 1 for n in mask.sum(1).tolist()]  # minus the forced end token
        assert [len(h.tokens) for h in hyps] == expected
        assert all(PAD not in h.tokens and BOS not in h.tokens for h in hyps)
