"""MLMCollator: BERT's 15% / 80-10-10 masking, never on specials, fresh every epoch, whole words together."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.data.masking import IGNORE_INDEX, MLMCollator
from zoo.data.wordpiece import train_wordpiece

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000
CONTINUATIONS = list(range(500, 1000))  # ids >= 500 play "##piece"


def _collator(**kw) -> MLMCollator:
    kw.setdefault("continuation_ids", CONTINUATIONS)
    return MLMCollator(
        mask_token_id=MASK, pad_token_id=PAD, special_token_ids=SPECIALS, vocab_size=VOCAB, **kw
    )


def _example(body: list[int], index: int, epoch: int = 0) -> dict:
    ids = [CLS, *body, SEP]
    return {"input_ids": torch.tensor(ids), "index": index, "epoch": epoch}


bodies = st.lists(st.integers(min_value=UNK, max_value=VOCAB - 1), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(body=bodies, index=st.integers(0, 10**9), epoch=st.integers(0, 1000), seed=st.integers(0, 2**32))
def test_exactly_15_percent_of_maskable_tokens_are_targets_and_specials_never(body, index, epoch, seed):
    batch = _collator(seed=seed)([_example(body, index, epoch)])
    ids = torch.tensor([CLS, *body, SEP])
    labels, masked = batch["labels"][0], batch["input_ids"][0]
    chosen = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))
    n = int(maskable.sum())
    assert int(chosen.sum()) == (max(1, round(0.15 * n)) if n else 0)
    assert not (chosen & ~maskable).any()  # [CLS] [SEP] [UNK] never targets
    assert torch.equal(labels[chosen], ids[chosen])  # a label is the original token
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert not torch.isin(masked[chosen & (masked != MASK)], torch.tensor(SPECIALS)).any()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_chosen_tokens_split_80_10_10(seed):
    collate = _collator(seed=seed)
    examples = [_example(list(range(5, 105)), index=i) for i in range(300)]  # 15 targets each: 4500
    batch = collate(examples)
    chosen = batch["labels"] != IGNORE_INDEX
    original, now = batch["labels"][chosen], batch["input_ids"][chosen]
    total = len(original)
    as_mask = (now == MASK).sum().item() / total
    kept = (now == original).sum().item() / total  # a random draw equal to the original counts here (1/995)
    assert total == 300 * 15
    assert as_mask == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1, abs=0.025)
    assert 1 - as_mask - kept == pytest.approx(0.1, abs=0.025)


@settings(max_examples=25, deadline=None)
@given(body=st.lists(st.integers(5, 499), min_size=20, max_size=100), index=st.integers(0, 10**6))
def test_a_fresh_but_reproducible_mask_each_epoch(body, index):
    collate = _collator(seed=3)
    first = collate([_example(body, index, epoch=0)])
    again = collate([_example(body, index, epoch=0)])
    later = collate([_example(body, index, epoch=1)])
    for key in first:
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["labels"] != IGNORE_INDEX, later["labels"] != IGNORE_INDEX)


def test_mask_does_not_depend_on_batch_neighbours():
    collate = _collator(seed=0)
    alone = collate([_example(list(range(10, 60)), index=7)])
    together = collate([_example(list(range(100, 130)), index=1), _example(list(range(10, 60)), index=7)])
    assert torch.equal(alone["labels"][0], together["labels"][1])


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.tuples(st.integers(5, 499), st.lists(st.integers(500, 999), max_size=3)), min_size=1, max_size=60
    ),
    index=st.integers(0, 10**6),
)
def test_whole_words_are_chosen_together(words, index):
    body = [piece for start, rest in words for piece in (start, *rest)]
    word_of = [w for w, (_, rest) in enumerate(words) for _ in range(1 + len(rest))]
    chosen = (_collator(whole_word=True)([_example(body, index)])["labels"][0, 1:-1] != IGNORE_INDEX).tolist()
    per_word: dict[int, set[bool]] = {}
    for w, c in zip(word_of, chosen):
        per_word.setdefault(w, set()).add(c)
    assert all(len(flags) == 1 for flags in per_word.values())  # all pieces of a word, or none
    target = max(1, round(0.15 * len(body)))
    n_words = len({w for w, c in zip(word_of, chosen) if c})
    assert 0 < sum(chosen) <= target or n_words == 1  # one word over the count beats no target at all


def test_padding_to_multiple_and_batch_layout():
    collate = _collator(pad_to_multiple_of=8, max_length=20)
    long = {**_example(list(range(5, 22)), 0), "token_type_ids": torch.tensor([0] * 10 + [1] * 9)}
    short = {**_example([7, 8, 9], 1), "token_type_ids": torch.tensor([0, 0, 0, 1, 1])}
    batch = collate([{**long, "next_sentence_label": 1}, {**short, "next_sentence_label": 0}])
    assert batch["input_ids"].shape == (2, 20)  # 19 rounds to 24, capped at max_length
    assert batch["attention_mask"].sum(1).tolist() == [19, 5]
    assert (batch["input_ids"][1, 5:] == PAD).all() and (batch["labels"][1, 5:] == IGNORE_INDEX).all()
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1] + [0] * 15
    assert batch["next_sentence_label"].tolist() == [1, 0]
    assert _collator(pad_to_multiple_of=8)([short])["input_ids"].shape == (1, 8)


def test_from_tokenizer_takes_specials_and_continuation_pieces():
    text = ["the unbelievable tokenization of unbelievably long words", "tokenizers tokenize"] * 50
    tokenizer = train_wordpiece(iter(text), vocab_size=120, min_frequency=1)
    collate = MLMCollator.from_tokenizer(tokenizer, whole_word=True)
    vocab = tokenizer.get_vocab()
    assert collate.mask_token_id == vocab["[MASK]"] and collate.pad_token_id == vocab["[PAD]"]
    assert set(collate.continuation_ids.tolist()) == {i for t, i in vocab.items() if t.startswith("##")}
    assert not set(collate.replacement_ids.tolist()) & {
        vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    }


def test_examples_without_an_index_are_refused():
    with pytest.raises(KeyError, match="index"):
        _collator()([{"input_ids": torch.tensor([CLS, 7, SEP])}])
