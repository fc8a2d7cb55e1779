"""Sampling: KV cache vs full recompute, batched prompts of different lengths, stop tokens, filters."""

from __future__ import annotations

import re

import pytest
import torch

from zoo.models.gpt2 import GPT2
from zoo.tasks.generation import filter_logits, generate


def _model(max_seq_len: int = 64) -> GPT2:
    torch.manual_seed(0)
    return GPT2(vocab_size=50, max_seq_len=max_seq_len, embed_dim=32, num_heads=4, num_layers=2).eval()


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
    assert a == b


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
    ],
)
def test_bad_sampling_arguments_are_refused_before_decoding(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(_model(), [[1, 2]], **{"max_new_tokens": 4, **bad})
    if "top_k" in bad or "top_p" in bad:  # no longer silently ignored by the filter either
        with pytest.raises(ValueError, match=re.escape(message.replace("generate", "filter_logits"))):
            filter_logits(torch.zeros(1, 5), **bad)
