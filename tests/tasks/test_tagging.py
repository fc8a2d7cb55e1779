"""TokenClassification + TaggingDataModule: subword alignment, mapping predictions back to words, a tiny
fit on real CoNLL-2003 sentences, checkpoint -> predictions in the input format, and bad input."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import cpu_trainer, shared_file

from zoo.data import TaggingDataModule
from zoo.models.bert import Bert
from zoo.tasks import TokenClassification
from zoo.tasks.callbacks import PredictionWriter
from zoo.tasks.optim import with_init_args
from zoo.tasks.tagging import OPTIMIZER

MINILM = dict(max_seq_len=512, embed_dim=384, num_heads=12, num_layers=6, hidden_dim=1536, vocab_size=30522)
CONLL = """-DOCSTART- -X- -X- O

Schwarzenegger NNP B-NP B-PER
visited VBD B-VP O
Wolfeschlegelsteinhausen NNP B-NP B-LOC
. . O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O"""


def _data(minilm_dir, tmp_path, text: str = CONLL, **kwargs) -> TaggingDataModule:
    train = tmp_path / "train.txt"
    train.write_text(text, encoding="utf-8")
    return TaggingDataModule(tokenizer=str(minilm_dir), train_file=str(train), val_file=str(train), **kwargs)


def test_label_goes_on_the_first_subword_of_each_word(minilm_dir, tmp_path):
    data = _data(minilm_dir, tmp_path)
    assert data.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER"]
    data.setup("fit")
    example = data._datasets["fit"][0]
    pieces = [data.tokenizer.id_to_token(i) for i in example["input_ids"]]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert len(pieces) > 6  # the long names split into many subwords
    first = [i for i, w in enumerate(example["word_index"]) if w >= 0]
    assert [example["word_index"][i] for i in first] == [0, 1, 2, 3]
    assert not any(pieces[i].startswith("##") for i in first)
    names = data.label_names
    assert [names[example["labels"][i]] for i in first] == ["B-PER", "O", "B-LOC", "O"]
    others = [i for i in range(len(pieces)) if i not in first]
    assert all(example["labels"][i] == -100 and example["word_index"][i] == -1 for i in others)
    assert all(pieces[i].startswith("##") for i in others[1:-1])  # continuation pieces only


def test_predictions_map_back_to_words():
    backbone = Bert(
        vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, with_pretraining_heads=False
    )
    task = TokenClassification(backbone, num_labels=3, label_names=["O", "B-X", "I-X"]).eval()
    with torch.no_grad():
        task.head[1].weight.zero_()
        task.head[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always "B-X"
    batch = {
        "input_ids": torch.randint(5, 50, (2, 6)),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
        "word_index": torch.tensor([[-1, 0, -1, 1, 2, -1], [-1, 0, 1, -1, -1, -1]]),
    }
    assert task.predict_step(batch, 0) == [["B-X"] * 3, ["B-X"] * 2]


def test_tiny_fit_on_real_conll_then_predict_in_the_input_format(minilm_dir, tmp_path):
    text = shared_file("conll2003/train.txt").read_text(encoding="utf-8")
    sentences = [s for s in text.split("\n\n") if not s.startswith("-DOCSTART-")][:24]
    train = tmp_path / "train.txt"
    train.write_text("\n\n".join(sentences), encoding="utf-8")
    words_only = tmp_path / "new.txt"
    words_only.write_text("Peter Blackburn visited Paris .\n".replace(" ", "\n") + "\nEU\nrejects\nit\n")
    data = TaggingDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(train),
        val_file=str(train),
        predict_file=str(words_only),
        batch_size=8,
    )
    torch.manual_seed(0)
    task = TokenClassification(
        Bert(**MINILM, with_pretraining_heads=False),
        num_labels=data.num_labels,
        label_names=data.label_names,
        pretrained=str(minilm_dir),
        optimizer=with_init_args(OPTIMIZER, lr=3e-4),
        freeze_embeddings=True,
    )
    before = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    cpu_trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(task, datamodule=data)
    after = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    assert after["val_loss"] < 0.5 * before["val_loss"]
    assert after["val_f1"] > before["val_f1"] and after["val_acc"] > 0.9
    out = tmp_path / "pred.txt"
    cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(out))]).predict(
        task, datamodule=data, return_predictions=False
    )
    blocks = out.read_text().strip("\n").split("\n\n")
    assert [[line.split()[0] for line in b.splitlines()] for b in blocks] == [
        ["Peter", "Blackburn", "visited", "Paris", "."],
        ["EU", "rejects", "it"],
    ]
    tags = [line.split()[1] for b in blocks for line in b.splitlines()]
    assert all(len(line.split()) == 2 for b in blocks for line in b.splitlines())
    assert set(tags) <= set(data.label_names)


def test_validation_tag_missing_from_training_set_is_named(minilm_dir, tmp_path):
    data = _data(minilm_dir, tmp_path)
    val = tmp_path / "val.txt"
    val.write_text("Paris NNP B-NP B-GPE\n", encoding="utf-8")
    data.files["validate"] = str(val)
    with pytest.raises(ValueError, match=r"val\.txt:1: label 'B-GPE' is not in the training label set"):
        data.setup("fit")


def test_wrong_column_count_names_file_and_line(minilm_dir, tmp_path):
    data = _data(minilm_dir, tmp_path, CONLL.replace("visited VBD B-VP O", "visited VBD O"))
    with pytest.raises(ValueError, match=r"train\.txt:4: expected 4 columns, found 3"):
        _ = data.label_names


def test_ud_upos_reads_syntactic_words(minilm_dir):
    data = TaggingDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(shared_file("ud_en_ewt/en_ewt-ud-dev.conllu")),
        format="conllu",
        field="upos",
    )
    assert len(data.label_names) == 17 and "PROPN" in data.label_names


def test_plain_text_predict_file_gives_word_tab_tag_lines(minilm_dir, tmp_path):
    """``predict_format: text``: one sentence per line in, ``word<TAB>tag`` lines out, a blank line after
    each sentence, in input order; every word tagged, even the one past the truncation point."""
    lines = ["Peter Blackburn visited Wolfeschlegelsteinhausen .", "", "EU   rejects\tit", "no"]
    new = tmp_path / "new.txt"
    new.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = _data(minilm_dir, tmp_path, predict_file=str(new), predict_format="text", max_seq_len=8)
    backbone = Bert(
        vocab_size=30522,
        max_seq_len=16,
        embed_dim=16,
        num_heads=2,
        num_layers=1,
        with_pretraining_heads=False,
    )
    torch.manual_seed(0)
    task = TokenClassification(backbone, num_labels=data.num_labels, label_names=data.label_names)
    out = tmp_path / "pred.txt"
    cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(out))]).predict(
        task, datamodule=data, return_predictions=False
    )
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n\n") and "\n\n\n" not in text
    blocks = [[row.split("\t") for row in block.split("\n")] for block in text[:-2].split("\n\n")]
    assert [[word for word, _ in block] for block in blocks] == [line.split() for line in lines if line]
    assert all(len(row) == 2 and row[1] in data.label_names for block in blocks for row in block)
    assert blocks[0][-1][1] == "O"  # truncated at 8 subwords: the last word gets the first label


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("num_labels", 0, "num_labels must be a positive integer, got 0"),
        ("classifier_dropout", -0.1, "classifier_dropout must be in [0, 1], got -0.1"),
    ],
)
def test_bad_arguments_are_named_at_construction(argument, value, message):
    backbone = Bert(
        vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, with_pretraining_heads=False
    )
    with pytest.raises(ValueError, match=f"^TokenClassification: {re.escape(message)}"):
        TokenClassification(backbone, **{argument: value})
