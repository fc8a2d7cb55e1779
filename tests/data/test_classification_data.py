"""Labelled tables: readers, label sets, truncation, bucketed batches, and the bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_file

from zoo.data import TextClassificationDataModule
from zoo.data.classification import read_table
from zoo.data.labelled import LengthBucketSampler, pad_batch


def _module(minilm_dir, tmp_path, train: str, val: str | None = None, suffix: str = ".tsv", **kwargs):
    train_path = tmp_path / f"train{suffix}"
    train_path.write_text(train, encoding="utf-8")
    val_path = None
    if val is not None:
        val_path = tmp_path / f"val{suffix}"
        val_path.write_text(val, encoding="utf-8")
    return TextClassificationDataModule(
        tokenizer=str(minilm_dir), train_file=str(train_path), val_file=val_path and str(val_path), **kwargs
    )


def test_sst2_labels_lengths_and_batches(minilm_dir):
    data = TextClassificationDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(shared_file("sst2/train.tsv")),
        val_file=str(shared_file("sst2/dev.tsv")),
        batch_size=16,
    )
    assert data.label_names == ["0", "1"] and data.num_labels == 2
    data.setup("fit")
    assert len(data._datasets["fit"]) == 67_349 and len(data._datasets["validate"]) == 872
    first = data._datasets["validate"][0]
    assert first["input_ids"][0] == data.tokenizer.token_to_id("[CLS]")
    assert first["input_ids"][-1] == data.tokenizer.token_to_id("[SEP]")
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (32,)
    # padding goes right, to the longest example of the batch only
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max()) == batch["input_ids"].shape[1]
    assert bool((batch["input_ids"][batch["attention_mask"] == 0] == 0).all())


def test_bucketed_training_batches_cover_everything_once_with_little_padding():
    lengths = torch.randint(1, 60, (1000,)).tolist()
    sampler = LengthBucketSampler(range(1000), lengths=lengths, batch_size=16, seed=3)
    sampler.set_epoch(2)
    order = sampler.epoch_indices()
    assert sorted(order) == list(range(1000))
    batches = [order[i : i + 16] for i in range(0, 1000, 16)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert sum(lengths) / padded > 0.9  # random batches would waste about half
    assert sampler.epoch_indices() == order  # deterministic per (seed, epoch)
    sampler.set_epoch(3)
    assert sampler.epoch_indices() != order


def test_pair_columns_get_segment_ids_and_truncation_is_counted(minilm_dir, tmp_path):
    rows = (
        "premise\thypothesis\tlabel\n" + "a cat sits\ta cat is sitting\tyes\n" + ("word " * 300) + "\tb\tno\n"
    )
    data = _module(
        minilm_dir, tmp_path, rows, text_column="premise", text_pair_column="hypothesis", max_seq_len=32
    )
    data.setup("fit")
    short, long = data._datasets["fit"].items
    assert 1 in short["token_type_ids"] and short["token_type_ids"][0] == 0
    assert not short["truncated"] and long["truncated"] and len(long["input_ids"]) == 32
    assert data.label_names == ["no", "yes"]


def test_multi_label_jsonl_and_regression_csv(minilm_dir, tmp_path):
    lines = [{"text": "sunny and warm", "tags": ["weather", "good"]}, {"text": "rain", "tags": ["weather"]}]
    jsonl = "\n".join(json.dumps(x) for x in lines) + "\n"
    multi = _module(
        minilm_dir,
        tmp_path,
        jsonl,
        suffix=".jsonl",
        text_column="text",
        label_column="tags",
        problem_type="multi_label",
    )
    multi.setup("fit")
    assert multi.label_names == ["good", "weather"]
    batch = pad_batch(multi._datasets["fit"].items, pad_token_id=0)
    assert batch["labels"].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    csv = 'text,score\n"great, really great",4.5\nbad,1\n'
    reg = _module(
        minilm_dir,
        tmp_path,
        csv,
        suffix=".csv",
        text_column="text",
        label_column="score",
        problem_type="regression",
    )
    reg.setup("fit")
    assert reg.num_labels == 1 and [e["labels"] for e in reg._datasets["fit"].items] == [4.5, 1.0]


def test_validation_label_missing_from_training_set_is_named(minilm_dir, tmp_path):
    data = _module(
        minilm_dir, tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\n", "sentence\tlabel\nmeh\tneutral\n"
    )
    with pytest.raises(
        ValueError, match=r"val\.tsv:2: label 'neutral' is not in the training label set \['neg', 'pos'\]"
    ):
        data.setup("fit")


def test_test_label_missing_from_training_set_is_named(minilm_dir, tmp_path):
    data = _module(minilm_dir, tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    test = tmp_path / "test.tsv"
    test.write_text("sentence\tlabel\nfine\tpos\nmeh\tneutral\n", encoding="utf-8")
    data.files["test"] = str(test)
    with pytest.raises(ValueError, match=r"test\.tsv:3: label 'neutral' is not in the training label set"):
        data.setup("test")
    # multi-label: each label of a row is checked
    multi = _module(
        minilm_dir,
        tmp_path,
        "sentence\tlabel\na\tx,y\n",
        "sentence\tlabel\nb\ty\nc\ty,z\n",
        problem_type="multi_label",
    )
    with pytest.raises(
        ValueError, match=r"val\.tsv:3: label 'z' is not in the training label set \['x', 'y'\]"
    ):
        multi.setup("fit")


@pytest.mark.parametrize(
    "labels, line, message",
    [
        (
            ["0", "1", "1", "positive", "0"],
            5,
            "label 'positive' is a word, but 4 labels of column 'label' are numbers",
        ),
        (["neg", "pos", "1", "neg"], 4, "label '1' is a number, but 3 labels of column 'label' are words"),
    ],
)
def test_label_column_mixing_numbers_and_words_is_named(minilm_dir, tmp_path, labels, line, message):
    rows = "".join(f"text {i}\t{label}\n" for i, label in enumerate(labels))
    data = _module(minilm_dir, tmp_path, "sentence\tlabel\n" + rows)
    with pytest.raises(ValueError, match=rf"train\.tsv:{line}: {message}.*must not mix numbers and words"):
        _ = data.label_names


def test_mixed_validation_labels_are_named_before_unknown_ones(minilm_dir, tmp_path):
    data = _module(
        minilm_dir, tmp_path, "sentence\tlabel\na\t0\nb\t1\n", "sentence\tlabel\nc\t1\nd\t0\ne\tpositive\n"
    )
    with pytest.raises(
        ValueError, match=r"val\.tsv:4: label 'positive' is a word, but 2 labels .* are numbers"
    ):
        data.setup("fit")


def test_txt_predict_file_holds_one_text_per_line(minilm_dir, tmp_path):
    data = _module(minilm_dir, tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    new = tmp_path / "new.txt"
    new.write_text("a gorgeous , witty movie\n\n  the worst film \r\nfine", encoding="utf-8")
    data.files["predict"] = str(new)
    data.setup("predict")
    items = data._datasets["predict"].items
    texts = ["a gorgeous , witty movie", "  the worst film ", "fine"]  # blank lines skipped
    assert [e["input_ids"] for e in items] == [data.tokenizer.encode(t).ids for t in texts]
    assert [e["index"] for e in items] == [0, 1, 2] and all(e["labels"] is None for e in items)
    # a .txt has no label column: refused where labels are needed, and for pair tasks
    with pytest.raises(
        ValueError, match=r"new\.txt: a \.txt file holds one text per line, no \['sentence', 'label'\]"
    ):
        TextClassificationDataModule(tokenizer=str(minilm_dir), train_file=str(new)).setup("fit")
    pairs = _module(minilm_dir, tmp_path, "a\tb\tlabel\nx\ty\t1\n", text_column="a", text_pair_column="b")
    pairs.files["predict"] = str(new)
    with pytest.raises(
        ValueError, match=r"new\.txt: a \.txt predict_file .* text pairs \(text_pair_column='b'\)"
    ):
        pairs.setup("predict")


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("eval_batch_size", -8, "eval_batch_size must be a positive integer, got -8"),
        ("max_seq_len", 0, "max_seq_len must be a positive integer, got 0"),
        ("max_train_examples", 0, "max_train_examples must be a positive integer, got 0"),
        ("label_separator", "", "label_separator must not be empty"),
    ],
)
def test_bad_sizes_are_named_at_construction(argument, value, message):
    with pytest.raises(ValueError, match=f"^TextClassificationDataModule: {message}"):
        TextClassificationDataModule(tokenizer="unused", **{argument: value})


def test_empty_text_field_names_file_and_line(minilm_dir, tmp_path):
    data = _module(minilm_dir, tmp_path, "sentence\tlabel\ngood\t1\n \t0\n")
    with pytest.raises(ValueError, match=r"train\.tsv:3: empty text in column 'sentence'"):
        data.setup("fit")


def test_table_without_the_named_column(minilm_dir, tmp_path):
    data = _module(minilm_dir, tmp_path, "text\tlabel\ngood\t1\n")
    with pytest.raises(
        ValueError, match=r"train\.tsv:1: no column 'sentence'; the header has \['text', 'label'\]"
    ):
        data.setup("fit")


def test_malformed_rows_and_files(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\t1\textra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: 3 fields, but the header has 2"):
        read_table(bad, ["sentence", "label"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: invalid JSON"):
        read_table(broken, ["text", "label"])
    binary = tmp_path / "latin1.tsv"
    binary.write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(ValueError, match=r"latin1\.tsv: not UTF-8 text \(byte 18"):
        read_table(binary, ["sentence", "label"])
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_table(tmp_path / "missing.tsv", ["sentence"])


def test_checkpoint_labels_must_match_the_training_file(minilm_dir, tmp_path):
    data = _module(minilm_dir, tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    state = data.state_dict()
    assert state["labels"] == ["neg", "pos"]
    other = _module(minilm_dir, tmp_path / "..", "sentence\tlabel\ngood\tyes\nbad\tno\n")
    with pytest.raises(ValueError, match="the checkpoint's labels"):
        other.load_state_dict(state)


def test_bucketed_sampler_resumes_exactly_mid_epoch():
    from zoo.data.resumable import TrainPosition

    lengths = torch.randint(1, 60, (500,)).tolist()
    full = LengthBucketSampler(range(500), lengths=lengths, batch_size=8, seed=1)
    full.set_epoch(4)
    order = list(full)
    resumed = LengthBucketSampler(range(500), lengths=lengths, batch_size=8, seed=1)
    resumed.resume_from(TrainPosition(epoch=4, batches=13))
    resumed.set_epoch(4)
    assert list(resumed) == order[13 * 8 :]
    assert list(resumed) == order  # only the resumed epoch is shortened


def test_ranks_read_disjoint_shares():
    lengths = [5] * 101
    shares = []
    for rank in range(2):
        sampler = LengthBucketSampler(
            range(101), lengths=lengths, batch_size=4, seed=0, num_replicas=2, rank=rank
        )
        shares.append(set(sampler.epoch_indices()))
    assert shares[0] | shares[1] == set(range(101))
    assert len(shares[0] & shares[1]) <= 1  # DistributedSampler pads the odd tail with one repeat
