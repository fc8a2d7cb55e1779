"""BERT pretraining data: document formats, NSP pairs as Google builds them, the cache, shards, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from zoo.data import BertPretrainingDataModule
from zoo.data.documents import read_documents, split_sentences
from zoo.data.nsp import create_instances
from zoo.data.pretraining import PretrainingExamples, _hold_out
from zoo.data.resumable import EpochSampler, TrainPosition

CLS, SEP = 2, 3


def _synthetic_documents(n_docs: int = 150, seed: int = 0) -> list[list[np.ndarray]]:
    """Token ``d * 10_000 + s * 100 + k`` is piece k of sentence s of document d: it says where it is from."""
    rng = np.random.default_rng(seed)
    return [
        [d * 10_000 + s * 100 + np.arange(rng.integers(3, 25)) for s in range(rng.integers(1, 30))]
        for d in range(n_docs)
    ]


def _pairs(arrays: dict[str, np.ndarray]):
    for i in range(len(arrays["offsets"]) - 1):
        ids = arrays["input_ids"][arrays["offsets"][i] : arrays["offsets"][i + 1]]
        a_len = arrays["segment_a_lengths"][i]
        yield ids, ids[1 : a_len - 1], ids[a_len:-1], int(arrays["next_sentence_labels"][i])


def test_documents_from_blank_lines_wikitext_and_conllu(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("First doc, line one.\nLine two.\n\n\nSecond doc.\n  \nThird doc.\n")
    assert read_documents(plain) == [["First doc, line one.", "Line two."], ["Second doc."], ["Third doc."]]
    wiki = tmp_path / "wiki.valid.tokens"
    wiki.write_text(
        " \n = Lobster = \n \n A 5 @.@ 5 cm <unk> , well @-@ known . It bites . \n \n = = Biology = = \n"
        " More text . \n \n = Crab = \n \n Crabs walk . \n"
    )
    assert read_documents(wiki) == [
        ["A 5.5 cm [UNK] , well-known . It bites .", "More text ."],
        ["Crabs walk ."],
    ]
    conllu = tmp_path / "ewt.conllu"
    conllu.write_text(
        "# newdoc id = a\n# sent_id = 1\n# text = Hello there.\n1\tHello\t_\n\n# sent_id = 2\n"
        "# text = Second one.\n1\tSecond\t_\n\n# newdoc id = b\n# text = Other doc.\n1\tOther\t_\n"
    )
    assert read_documents(conllu) == [["Hello there.", "Second one."], ["Other doc."]]
    assert split_sentences("It bites . Crabs walk sideways! Do they? yes. [UNK] swims .") == [
        "It bites .",
        "Crabs walk sideways!",
        "Do they? yes.",
        "[UNK] swims .",
    ]


def test_nsp_pairs_are_half_real_half_from_another_document():
    documents = _synthetic_documents()
    arrays = create_instances(documents, max_seq_len=64, cls_id=CLS, sep_id=SEP, dupe_factor=2, seed=1)
    labels = arrays["next_sentence_labels"]
    assert len(labels) > 1000
    assert labels.mean() == pytest.approx(0.5, abs=0.04)
    for ids, a, b, is_random in _pairs(arrays):
        assert len(ids) <= 64 and len(a) >= 1 and len(b) >= 1
        assert ids[0] == CLS and ids[len(a) + 1] == SEP and ids[-1] == SEP
        a_doc, b_doc = set(a // 10_000), set(b // 10_000)
        assert len(a_doc) == 1 and len(b_doc) == 1  # each segment comes from one document
        if is_random:
            assert a_doc != b_doc
        else:  # B is the text right after A
            assert a_doc == b_doc and a.max() < b.min()
            assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)


def test_instances_are_reproducible_and_short_seq_prob_shortens():
    documents = _synthetic_documents(60)
    kw = dict(max_seq_len=128, cls_id=CLS, sep_id=SEP)
    first, again = create_instances(documents, seed=5, **kw), create_instances(documents, seed=5, **kw)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    other = create_instances(documents, seed=6, **kw)
    assert not np.array_equal(first["segment_a_lengths"], other["segment_a_lengths"])
    full = np.diff(create_instances(documents, short_seq_prob=0.0, **kw)["offsets"]).mean()
    short = np.diff(create_instances(documents, short_seq_prob=1.0, **kw)["offsets"]).mean()
    assert short < 0.8 * full


def test_without_nsp_one_document_is_enough():
    documents = _synthetic_documents(1)
    with pytest.raises(ValueError, match="at least 2 documents"):
        create_instances(documents, max_seq_len=32, cls_id=CLS, sep_id=SEP)
    arrays = create_instances(documents, max_seq_len=32, cls_id=CLS, sep_id=SEP, nsp=False)
    assert "next_sentence_labels" not in arrays
    lengths = np.diff(arrays["offsets"])
    assert (lengths <= 32).all() and (arrays["segment_a_lengths"] == lengths).all()


def test_examples_carry_segments_epoch_and_index():
    arrays = create_instances(_synthetic_documents(5), max_seq_len=32, cls_id=CLS, sep_id=SEP)
    data = PretrainingExamples(
        arrays["input_ids"], arrays["offsets"], arrays["segment_a_lengths"], arrays["next_sentence_labels"]
    )
    example = data[(4, 3)]
    a_len = int(arrays["segment_a_lengths"][3])
    assert example["index"] == 3 and example["epoch"] == 4 and data[3]["epoch"] == 0
    assert example["token_type_ids"].tolist() == [0] * a_len + [1] * (len(example["input_ids"]) - a_len)
    assert example["next_sentence_label"] == arrays["next_sentence_labels"][3]


def test_epoch_sampler_tags_examples_with_their_epoch_and_can_skip_ahead():
    sampler = EpochSampler(list(range(100)), batch_size=10, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    assert sorted(i for _, i in epoch1) == list(range(100)) and epoch0 != [(0, i) for _, i in epoch1]
    sampler.resume_from(TrainPosition(epoch=1, batches=3))
    assert list(sampler) == epoch1[30:]


def test_hold_out_splits_documents():
    documents = [[np.array([d])] for d in range(40)]
    train, val = _hold_out(documents, 0.1, min_docs=2, seed=0)
    assert len(val) == 4 and len(train) == 36
    assert not {int(d[0][0]) for d in train} & {int(d[0][0]) for d in val}
    with pytest.raises(ValueError, match="val_fraction"):
        _hold_out(documents[:3], 0.1, min_docs=2, seed=0)


def _dm(files, tmp_path, **kw) -> BertPretrainingDataModule:
    kw = {"wordpiece_vocab_size": 500, "max_seq_len": 64, "batch_size": 8, "val_fraction": 0.1, **kw}
    return BertPretrainingDataModule([str(f) for f in files], cache_dir=str(tmp_path / "cache"), **kw)


def test_data_module_on_ud_english(tmp_path):
    dm = _dm([shared_file("ud_en_ewt/en_ewt-ud-dev.conllu")], tmp_path)
    dm.prepare_data()
    (cache,) = (tmp_path / "cache" / "bert-pretraining").iterdir()
    stamp = (cache / "meta.json").stat().st_mtime_ns
    dm.setup("fit")
    assert dm.vocab_size == 500
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] % 8 == 0
    assert batch["input_ids"].shape[1] <= 64
    again = _dm([shared_file("ud_en_ewt/en_ewt-ud-dev.conllu")], tmp_path)
    again.prepare_data()  # same content and settings: the cache is reused
    assert (cache / "meta.json").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "bert-pretraining").iterdir())) == 1
    _dm([shared_file("ud_en_ewt/en_ewt-ud-dev.conllu")], tmp_path, max_seq_len=48).prepare_data()
    assert len(list((tmp_path / "cache" / "bert-pretraining").iterdir())) == 2
    first = next(iter(dm.val_dataloader()))
    assert torch.equal(first["input_ids"], next(iter(dm.val_dataloader()))["input_ids"])  # fixed val masks


def test_bad_corpora_are_named(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n\t\n")
    with pytest.raises(ValueError, match="no text"):
        _dm([blank], tmp_path).prepare_data()
    one_doc = tmp_path / "one.txt"
    one_doc.write_text("".join(f"Sentence number {i} is here.\n" for i in range(200)))
    with pytest.raises(ValueError, match="documents"):
        _dm([one_doc], tmp_path, val_files=[str(one_doc)]).prepare_data()
    _dm([one_doc], tmp_path, val_files=[str(one_doc)], nsp=False).prepare_data()  # fine without NSP
    one_liners = tmp_path / "one_liners.txt"
    one_liners.write_text("".join(f"Document {i} has one sentence.\n\n" for i in range(50)))
    with pytest.raises(ValueError, match="single sentence"):
        _dm([one_liners], tmp_path).prepare_data()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "sentence", "number"]) + "\n")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[MASK\]"):
        _ = _dm([one_doc], tmp_path, tokenizer=str(vocab)).vocab_size
    with pytest.raises(ValueError, match="max_seq_len"):
        _dm([one_doc], tmp_path, max_seq_len=4)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": -8}, "eval_batch_size must be a positive integer, got -8"),
        ({"dupe_factor": 0}, "dupe_factor must be a positive integer"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be a positive integer"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"mlm_probability": 1.0}, r"mlm_probability must be in \(0, 1\), got 1.0"),
        ({"mlm_probability": 0}, r"mlm_probability must be in \(0, 1\), got 0"),
        ({"short_seq_prob": -0.1}, r"short_seq_prob must be in \[0, 1\], got -0.1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\), got 1.0"),
    ],
)
def test_bad_sizes_and_probabilities_are_named_at_construction(tmp_path, setting, message):
    with pytest.raises(ValueError, match=f"BertPretrainingDataModule: {message}"):
        _dm([tmp_path / "corpus.txt"], tmp_path, **setting)


def test_training_batches_are_masked_afresh_each_epoch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join("\n".join(f"Document {d} sentence {s} says words." for s in range(8)) for d in range(20))
    )
    dm = _dm([corpus], tmp_path, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        epochs.append(next(iter(loader)))
    assert torch.equal(epochs[0]["labels"], epochs[2]["labels"])  # reproducible
    assert not torch.equal(epochs[0]["input_ids"], epochs[1]["input_ids"])  # new order and masks
    same_example = [dm.collator([dm.train_set[(epoch, 3)]])["labels"] for epoch in (0, 1)]
    assert not torch.equal(same_example[0] != -100, same_example[1] != -100)


def test_a_restored_position_continues_with_the_next_batch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join("\n".join(f"Document {d} sentence {s} says words." for s in range(8)) for d in range(20))
    )
    dm = _dm([corpus], tmp_path, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    uninterrupted = list(loader)
    resumed = _dm([corpus], tmp_path, batch_size=4)
    resumed.load_state_dict({**dm.state_dict(), "train_position": {"epoch": 2, "batches": 3}})
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.sampler.set_epoch(2)
    rest = list(loader)
    assert len(rest) == len(uninterrupted) - 3
    for a, b in zip(uninterrupted[3:], rest):  # same examples, same masks
        assert all(torch.equal(a[k], b[k]) for k in a)
