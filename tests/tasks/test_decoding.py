"""Decoding for both backbone kinds: cached = uncached, batched and padded = one at a time, beam size 1 is
greedy, a wide beam is exact, top-k 1 is greedy, seeds reproduce, stop tokens, filters, bad arguments."""

from __future__ import annotations

import itertools
import re
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.seq2seq import Transformer
from zoo.tasks import CausalLM
from zoo.tasks import decoding as decoding_module
from zoo.tasks.decoding import (
    CausalStep,
    Ending,
    Seq2SeqStep,
    beam_search,
    decode_beams,
    decode_one,
    filter_logits,
    generate,
    greedy_search,
    left_pad,
    max_lengths,
    normalized_score,
    pick_next,
    sample_search,
    step_log_probs,
)
from zoo.tasks.settings import Decoding

PAD, BOS, EOS = 0, 1, 2
SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, banned_ids=(PAD, BOS))
FAMILIES = {"GPT2": GPT2, "Llama": Llama}
GREEDY = partial(pick_next, temperature=0.0, top_k=None, top_p=None, generator=None)
USER_PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "user_project"


@pytest.fixture
def my_gru(monkeypatch):
    """A user's backbone with only ``forward(input_ids, attention_mask)``: no cache, no max_seq_len."""
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    import my_lm

    torch.manual_seed(0)
    return my_lm.GRULM(40, embed_dim=16).eval()


def _model(max_seq_len: int = 64) -> GPT2:
    torch.manual_seed(0)
    return GPT2(vocab_size=50, max_seq_len=max_seq_len, embed_dim=32, num_heads=4, num_layers=2).eval()


def _decoder(family: str, vocab_size: int = 50, *, sharpen: float = 1.0, max_seq_len: int = 32):
    torch.manual_seed(0)
    model = FAMILIES[family](  # an untied output layer: logits not dominated by copying the last token
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        embed_dim=32,
        num_heads=4,
        num_layers=2,
        tie_weights=False,
    ).eval()
    with torch.no_grad():  # peakier next-token distributions make beams disagree with greedy more often
        model.lm_head.weight.mul_(sharpen)
    return model


def _seq2seq(vocab_size: int, *, sharpen: float = 1.0) -> Transformer:
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
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def _sources(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randint(3, vocab_size, (6, 8), generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([8, 5, 1, 7, 3, 8])
    mask = (torch.arange(8)[None] < lengths[:, None]).long()
    return src.masked_fill(mask == 0, PAD), mask


def _causal(model, prompts, n: int, stop=(), *, use_cache: bool = True) -> tuple[CausalStep, Ending]:
    """A decoder-only step over left-padded ``prompts`` and the ending `generate` gives them."""
    ids, mask = left_pad(prompts, pad_token_id=0, device=torch.device("cpu"))
    step = CausalStep(model, ids, mask, max_new_tokens=n, use_cache=use_cache)
    return step, Ending(torch.full((len(prompts),), n), end_ids=tuple(stop))


def _seq2seq_step(model, src, mask, *, use_cache: bool, a: float = 1.0, b: int = 3):
    limits = max_lengths(src, mask, a=a, b=b, limit=model.max_seq_len)
    step = Seq2SeqStep(
        model, src, mask, bos_token_id=BOS, max_new_tokens=int(limits.max()), use_cache=use_cache
    )
    return step, Ending(limits, end_ids=(EOS,), force_end=True, banned_ids=(PAD, BOS))


def _same(got, expected, atol: float = 1e-5) -> None:
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert [h.log_prob for h in got] == pytest.approx([h.log_prob for h in expected], abs=atol)


# ---------------------------------------------------------------- decoder-only: sampling and greedy


def _greedy_reference(model: GPT2, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by re-running the whole sequence every step (no cache, no padding)."""
    ids = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids[:, -model.max_seq_len :])[0, -1].argmax().item()
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_cached_batched_greedy_equals_uncached_single_prompt_decoding():
    model = _model()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    got = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    for prompt, new in zip(prompts, got):
        assert new == _greedy_reference(model, prompt, 12)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_computes_the_output_layer_only_at_the_last_prompt_position(family):
    model = _decoder(family)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    rows = []  # the rows each call of the output layer multiplies
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[:2]))
    try:
        got = generate(model, prompts, max_new_tokens=4, temperature=0.0)
    finally:
        hook.remove()
    assert rows == [(3, 1)] * 4  # the prompts (7 positions wide) and each new token: one row per prompt
    for prompt, new in zip(prompts, got):
        assert new == _greedy_reference(model, prompt, 4)


def test_sliding_window_when_generation_outgrows_the_context():
    model = _model(max_seq_len=8)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    got = generate(model, prompts, max_new_tokens=10, temperature=0.0)
    for prompt, new in zip(prompts, got):
        assert new == _greedy_reference(model, prompt, 10)


def test_stop_tokens_end_each_row_independently():
    model = _model()
    full = generate(model, [[1, 2], [3]], max_new_tokens=10, temperature=0.0)
    stop = full[0][3]
    got = generate(model, [[1, 2], [3]], max_new_tokens=10, temperature=0.0, stop_tokens=[stop])
    assert got[0] == full[0][: full[0].index(stop)]
    expected_second = full[1][: full[1].index(stop)] if stop in full[1] else full[1]
    assert got[1] == expected_second


def test_top_k_one_and_tiny_top_p_sample_the_argmax():
    model = _model()
    greedy = generate(model, [[1, 2, 3]], max_new_tokens=8, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    assert generate(model, [[1, 2, 3]], max_new_tokens=8, temperature=1.0, top_k=1, generator=g) == greedy
    assert generate(model, [[1, 2, 3]], max_new_tokens=8, temperature=1.0, top_p=1e-6, generator=g) == greedy


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = _model()
    a = generate(model, [[1]], max_new_tokens=20, generator=torch.Generator().manual_seed(3))
    b = generate(model, [[1]], max_new_tokens=20, generator=torch.Generator().manual_seed(3))
    c = generate(model, [[1]], max_new_tokens=20, generator=torch.Generator().manual_seed(4))
    assert a == b
    assert a != c  # it does sample


def test_filter_logits_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_p=0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, top_k=3).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_left_padding_does_not_change_the_logits_of_real_tokens():
    model = _model()
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    pos = torch.tensor([[0, 0, 0, 1, 2]])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, position_ids=pos)[0, 2:]
        plain = model(torch.tensor([[5, 6, 7]]))[0]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)


def test_prompt_longer_than_the_context_is_refused_with_both_lengths():
    model = _model(max_seq_len=8)
    with pytest.raises(
        ValueError, match=r"prompt 1 has 9 tokens, more than the model's context of max_seq_len=8"
    ):
        generate(model, [[1, 2], list(range(9))], max_new_tokens=3, temperature=0.0)
    # a prompt that fills the context exactly is fine; generation then slides the window
    assert len(generate(model, [list(range(8))], max_new_tokens=3, temperature=0.0)[0]) == 3


def test_predict_prompts_longer_than_the_data_context_are_named(tmp_path):
    from zoo.data import TextDataModule

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 20)
    long_prompt = "whether 'tis nobler in the mind to suffer"
    dm = TextDataModule(
        files=[str(corpus)],
        tokenizer="char",
        max_seq_len=16,
        cache_dir=tmp_path / "cache",
        prompts=["to be", long_prompt],
    )
    dm.prepare_data()
    dm.setup("predict")
    with pytest.raises(
        ValueError,
        match=r"prompt \"whether 'tis nobler in the mind to suffe\.\.\.\" is 41 tokens long, longer than the "
        r"context of max_seq_len=16",
    ):
        dm.predict_dataloader()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"top_p": 1.5}, "generate: top_p must be in (0, 1], got 1.5"),
        ({"top_p": 0.0}, "generate: top_p must be in (0, 1], got 0.0"),
        ({"top_k": 0}, "generate: top_k must be a positive integer, got 0"),
        ({"temperature": -0.5}, "generate: temperature must be >= 0, got -0.5"),
        ({"max_new_tokens": 0}, "generate: max_new_tokens must be a positive integer, got 0"),
        ({"num_beams": 0}, "generate: num_beams must be a positive integer, got 0"),
    ],
)
def test_bad_sampling_arguments_are_refused_before_decoding(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(_model(), [[1, 2]], **{"max_new_tokens": 4, **bad})
    if "top_k" in bad or "top_p" in bad:  # no longer silently ignored by the filter either
        with pytest.raises(ValueError, match=re.escape(message.replace("generate", "filter_logits"))):
            filter_logits(torch.zeros(1, 5), **bad)


# ---------------------------------------------------------------- decoder-only: beam search


@torch.no_grad()
def _continuation_log_prob(model, prompt: list[int], tokens: list[int]) -> float:
    """Teacher-forced log-probability of ``tokens`` after ``prompt``."""
    logp = torch.log_softmax(model(torch.tensor([prompt + tokens]))[0].float(), dim=-1)  # (T, V)
    steps = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return float(logp[steps, torch.tensor(tokens)].sum())


@pytest.mark.parametrize("stop", [(4,), ()], ids=["stop-token", "no-stop-token"])
@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_wide_beam_finds_the_exhaustive_best(family, stop):
    vocab, n = 5, 3  # every continuation of up to 3 tokens: 85 with a stop token, 125 without
    model = _decoder(family, vocab, sharpen=3.0)
    beats_greedy = False
    for prompt, length_penalty in itertools.product([[1, 2], [3], [0, 4, 1]], [0.0, 0.6, 1.0]):
        scored = []  # a row ends at a stop token or after n tokens; length counts the stop token
        for length in range(1, n + 1):
            for seq in itertools.product(range(vocab), repeat=length):
                if any(t in stop for t in seq[:-1]) or (length < n and seq[-1] not in stop):
                    continue
                log_prob = _continuation_log_prob(model, prompt, list(seq))
                tokens = list(seq[:-1]) if seq[-1] in stop else list(seq)
                scored.append((normalized_score(log_prob, length, length_penalty), tokens, log_prob))
        assert len(scored) == (85 if stop else 125)
        best_score, best_tokens, best_log_prob = max(scored)
        step, ending = _causal(model, [prompt], n, stop)
        [hyp] = decode_beams(step, ending=ending, beam_size=25, length_penalty=length_penalty)
        assert hyp.tokens == best_tokens
        assert hyp.log_prob == pytest.approx(best_log_prob, abs=1e-4)
        step, ending = _causal(model, [prompt], n, stop)
        [greedy] = decode_one(step, ending=ending, pick=GREEDY)
        greedy_score = normalized_score(greedy.log_prob, min(len(greedy.tokens) + 1, n), length_penalty)
        beats_greedy |= best_score > greedy_score + 1e-3
    assert beats_greedy  # the search is not greedy in disguise on this model


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_beam_size_one_is_greedy(family):
    model = _decoder(family, sharpen=3.0)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    stop = generate(model, prompts, max_new_tokens=8, temperature=0.0)[0][2]  # ends row 0 early
    step, ending = _causal(model, prompts, 8, [stop])
    greedy = decode_one(step, ending=ending, pick=GREEDY)
    step, ending = _causal(model, prompts, 8, [stop])
    _same(decode_beams(step, ending=ending, beam_size=1), greedy)
    assert len(greedy[0].tokens) == 2 and {len(h.tokens) for h in greedy} != {2}
    assert [h.tokens for h in greedy] == generate(
        model, prompts, max_new_tokens=8, temperature=0.0, stop_tokens=[stop]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_cached_decoding_equals_uncached(family):
    model = _decoder(family, sharpen=3.0)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    for search in (partial(decode_one, pick=GREEDY), partial(decode_beams, beam_size=3, length_penalty=0.6)):
        cached, ending = _causal(model, prompts, 10, [5])
        got = search(cached, ending=ending)
        uncached, ending = _causal(model, prompts, 10, [5], use_cache=False)
        _same(got, search(uncached, ending=ending), atol=1e-4)
        assert cached.cache is not None and uncached.cache is None  # two different paths were compared


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_batched_padded_beams_equal_one_prompt_at_a_time(family):
    model = _decoder(family, sharpen=3.0)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9], [10, 11]]
    beams = dict(max_new_tokens=8, num_beams=3, length_penalty=1.0, stop_tokens=[5, 7])
    batched = generate(model, prompts, **beams)
    assert batched == [generate(model, [p], **beams)[0] for p in prompts]
    assert batched != generate(model, prompts, max_new_tokens=8, temperature=0.0, stop_tokens=[5, 7])


def test_decoder_beam_search_without_a_cache_slides_the_window(my_gru):
    # a backbone with no init_cache (and no max_seq_len) decodes beams by re-reading its tokens
    prompts = [[1, 2, 3], [4]]
    got = generate(my_gru, prompts, max_new_tokens=6, num_beams=3)
    assert [len(g) for g in got] == [6, 6]
    assert got == [generate(my_gru, [p], max_new_tokens=6, num_beams=3)[0] for p in prompts]


def test_causal_lm_generate_and_predict_decode_beams(tmp_path, monkeypatch):
    decoding = Decoding(num_beams=3, length_penalty=0.6, max_new_tokens=6)
    model = CausalLM(_decoder("Llama", sharpen=3.0), decoding=decoding)
    prompts = [[1, 2, 3], [4]]
    expected = generate(model.backbone, prompts, max_new_tokens=6, num_beams=3, length_penalty=0.6)
    assert model.predict_step({"prompts": prompts}, 0) == expected
    assert model.generate(prompts, max_new_tokens=6, num_beams=3, length_penalty=0.6) == expected
    with pytest.raises(ValueError, match=re.escape("decoding: num_beams must be a positive integer, got 0")):
        CausalLM(_decoder("Llama"), decoding=Decoding(num_beams=0))


def test_zoo_predict_decodes_beams_with_num_beams_from_the_config(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question; " * 40)
    config = tmp_path / "beams.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 0
            trainer:
              accelerator: cpu
              logger: false
              enable_progress_bar: false
              default_root_dir: {tmp_path / "run"}
              callbacks:
                - class_path: zoo.tasks.callbacks.TextPredictionWriter
            model:
              class_path: zoo.tasks.CausalLM
              init_args:
                backbone:
                  class_path: zoo.models.llama.Llama
                  init_args: {{max_seq_len: 32, embed_dim: 32, num_heads: 4, num_layers: 1}}
                max_new_tokens: 5
                top_k: 200
            data:
              class_path: zoo.data.TextDataModule
              init_args:
                files: [{corpus}]
                tokenizer: char
                max_seq_len: 32
                cache_dir: {tmp_path / "cache"}
                prompts: ["to be", "that"]
            """
        )
    )
    beams, real = [], decoding_module.decode_beams

    def spy(step, *, ending, beam_size, length_penalty=1.0):
        beams.append((beam_size, length_penalty))
        return real(step, ending=ending, beam_size=beam_size, length_penalty=length_penalty)

    monkeypatch.setattr(decoding_module, "decode_beams", spy)
    main(["predict", "--config", str(config), "--model.init_args.num_beams=4"])
    main(["predict", "--config", str(config), "--model.init_args.length_penalty=0.5"])  # num_beams: 1
    assert beams == [(4, 1.0)]  # the first run only: length_penalty alone does not switch to beams
    lines = (tmp_path / "run" / "predictions.txt").read_text().splitlines()  # no logger: default_root_dir
    assert [line[:-5] for line in lines] == ["to be", "that"]


# ---------------------------------------------------------------- encoder-decoder


@torch.no_grad()
def _sequence_log_prob(model, src, tokens: list[int], max_len: int) -> float:
    """Teacher-forced log-probability of ``tokens + [EOS]``, under the same rules as the searches."""
    tgt = torch.tensor([[BOS, *tokens]])
    logits = model(src, tgt)[0]  # (T, V)
    force = torch.arange(1, len(tokens) + 2) >= max_len
    logp = step_log_probs(logits, eos_token_id=EOS, banned_ids=(PAD, BOS), force_eos=force)
    return float(logp[torch.arange(len(tokens) + 1), torch.tensor([*tokens, EOS])].sum())


def test_beam_size_one_is_greedy():
    model = _seq2seq(30, sharpen=3.0)
    src, mask = _sources(30)
    greedy = greedy_search(model, src, mask, max_len_a=1.0, max_len_b=3, **SPECIAL)
    beam = beam_search(model, src, mask, beam_size=1, max_len_a=1.0, max_len_b=3, **SPECIAL)
    _same(beam, greedy)
    assert {len(h.tokens) for h in greedy} != {0}  # the model does produce something


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty):
    vocab, max_len = 6, 4  # 3 real tokens, up to 3 of them then the end: 40 possible outputs
    model = _seq2seq(vocab, sharpen=4.0)
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
    model = _seq2seq(30, sharpen=3.0)
    src, mask = _sources(30)
    greedy = greedy_search(model, src, mask, max_len_a=1.0, max_len_b=3, **SPECIAL)
    beam = beam_search(
        model, src, mask, beam_size=4, length_penalty=0.0, max_len_a=1.0, max_len_b=3, **SPECIAL
    )
    assert all(b.log_prob >= g.log_prob - 1e-5 for b, g in zip(beam, greedy))
    assert any(b.log_prob > g.log_prob + 1e-3 for b, g in zip(beam, greedy))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_padded_decoding_equals_one_at_a_time(beam_size):
    model = _seq2seq(30, sharpen=3.0)
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
    model = _seq2seq(30)
    src, mask = _sources(30)
    with torch.no_grad():  # make the end token impossible until it is forced
        model.lm_head.weight[EOS] = -100 * model.lm_head.weight.abs().max()
    for search in (greedy_search, beam_search, sample_search):
        hyps = search(model, src, mask, max_len_a=0.5, max_len_b=2, **SPECIAL)
        expected = [int(0.5 * n + 2) - 1 for n in mask.sum(1).tolist()]  # minus the forced end token
        assert [len(h.tokens) for h in hyps] == expected
        assert all(PAD not in h.tokens and BOS not in h.tokens for h in hyps)


def test_seq2seq_cached_decoding_equals_uncached():
    model = _seq2seq(30, sharpen=3.0)
    src, mask = _sources(30)
    for search in (decode_one, partial(decode_beams, beam_size=3, length_penalty=0.6)):
        cached, ending = _seq2seq_step(model, src, mask, use_cache=True)
        got = search(cached, ending=ending)
        uncached, ending = _seq2seq_step(model, src, mask, use_cache=False)
        _same(got, search(uncached, ending=ending), atol=1e-4)
        assert cached.cache is not None and uncached.cache is None


def test_seq2seq_sampling_top_k_one_is_greedy_and_seeds_reproduce():
    model = _seq2seq(30)
    src, mask = _sources(30)
    args = dict(max_len_a=1.0, max_len_b=4, **SPECIAL)
    greedy = greedy_search(model, src, mask, **args)
    g = torch.Generator().manual_seed(0)
    _same(sample_search(model, src, mask, top_k=1, generator=g, **args), greedy)
    _same(sample_search(model, src, mask, temperature=0.0, **args), greedy)
    a, b, c = (
        sample_search(model, src, mask, generator=torch.Generator().manual_seed(s), **args) for s in (3, 3, 4)
    )
    assert a == b
    assert a != c  # it does sample
    assert all(PAD not in h.tokens and BOS not in h.tokens for h in a + c)
    with pytest.raises(ValueError, match=re.escape("sample_search: top_p must be in (0, 1], got 2")):
        sample_search(model, src, mask, top_p=2, **args)
