"""CoNLL-2003 and CoNLL-U readers: published counts on the real files, malformed input, writing back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_file

from zoo.data import TaggingDataModule
from zoo.data.conll import (
    TaggedSentence,
    format_conll,
    format_conllu,
    format_word_tags,
    read_conll,
    read_conllu,
    read_sentence_lines,
)

CONLL = (
    "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER"  # no final newline, like the CoNLL-2003 files
)
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT"}
UPOS |= {"SCONJ", "SYM", "VERB", "X"}
CONLLU_ROWS = [
    "# sent_id = 1",
    "# text = Don't go.",
    "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_",
    "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t3:aux\t_",
    "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t3:advmod\t_",
    "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No",
    "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t3:conj\t_",
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t3:punct\t_",
]
CONLLU = "\n".join(CONLLU_ROWS) + "\n\n# sent_id = 2\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t0:root\t_\n\n"


def _write(tmp_path: Path, text: str | bytes, name: str = "f.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "name, sentences, tokens, ner, first",
    [
        ("train.txt", 14_041, 203_621, {"B-PER": 6_600, "I-MISC": 1_155}, ["EU", "rejects"]),
        ("valid.txt", 3_250, 51_362, {"B-LOC": 1_837, "I-ORG": 751}, ["CRICKET", "-"]),
    ],
)
def test_conll2003_published_counts(name, sentences, tokens, ner, first):
    data = read_conll(shared_file(f"conll2003/{name}"))
    assert (len(data), sum(len(s.words) for s in data)) == (sentences, tokens)
    tags = Counter(tag for s in data for tag in s.labels)
    assert set(tags) == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
    assert {k: tags[k] for k in ner} == ner
    assert data[0].words[:2] == first and data[0].start_line == 3
    # the files end without a newline: the last sentence is still read, whole
    assert data[-1].lines == Path(data[-1].path).read_text().split("\n")[data[-1].start_line - 1 :]


def test_conll2003_other_columns():
    data = read_conll(shared_file("conll2003/valid.txt"), column=2)
    chunks = {tag for s in data for tag in s.labels}
    assert "B-NP" in chunks and "B-PER" not in chunks
    pos = read_conll(shared_file("conll2003/valid.txt"), column=1)
    assert pos[0].labels == [line.split()[1] for line in pos[0].lines]


@pytest.mark.parametrize(
    "name, sentences, words",
    [("en_ewt-ud-train.conllu", 12_544, 204_577), ("en_ewt-ud-dev.conllu", 2_001, 25_147)],
)
def test_ud_ewt_published_counts(name, sentences, words):
    path = shared_file(f"ud_en_ewt/{name}")
    data = read_conllu(path)
    assert (len(data), sum(len(s.words) for s in data)) == (sentences, words)
    assert {tag for s in data for tag in s.labels} == UPOS
    if name.endswith("dev.conllu"):
        # writing the gold tags back reproduces the file byte for byte, comments and multiword lines included
        assert "".join(format_conllu(s, s.labels, field="upos") for s in data) == path.read_text()
        xpos = read_conllu(path, field="xpos")
        assert xpos[0].labels == ["IN", "DT", "NNP", "VBZ", "DT", "NN", ":"]


def test_conll_sentences_docstart_and_missing_final_newline(tmp_path):
    path = _write(tmp_path, CONLL)
    data = read_conll(path)
    assert data == [
        TaggedSentence(
            words=["EU", "rejects"],
            labels=["B-ORG", "O"],
            lines=["EU NNP B-NP B-ORG", "rejects VBZ B-VP O"],
            start_line=3,
            path=str(path),
        ),
        TaggedSentence(
            words=["Peter", "Blackburn"],
            labels=["B-PER", "I-PER"],
            lines=["Peter NNP B-NP B-PER", "Blackburn NNP I-NP I-PER"],
            start_line=6,
            path=str(path),
        ),
    ]
    # a -DOCSTART- right after a sentence, with no blank line, still ends it; several blank lines are one
    path = _write(tmp_path, "a X\nb Y\n-DOCSTART- O\nc Z\n\n\n\nd W\n\n")
    assert [s.words for s in read_conll(path)] == [["a", "b"], ["c"], ["d"]]
    assert [s.start_line for s in read_conll(path)] == [1, 4, 8]


def test_conll_wrong_column_count_names_path_and_line(tmp_path):
    path = _write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(ValueError, match=rf"{path}:2: expected 4 columns, found 3"):
        read_conll(path)
    with pytest.raises(ValueError, match=rf"{path}:1: column 4 is not a label column"):
        read_conll(_write(tmp_path, "EU NNP B-NP B-ORG\n"), column=4)


def test_conll_words_only(tmp_path):
    path = _write(tmp_path, "-DOCSTART-\n\nEU\nrejects\n\nPeter\n")
    with pytest.raises(ValueError, match=rf"{path}:3: only a word column"):
        read_conll(path)
    data = read_conll(path, require_labels=False)
    assert [(s.words, s.labels) for s in data] == [(["EU", "rejects"], None), (["Peter"], None)]
    assert format_conll(data[0], ["B-ORG", "O"], column=-1) == "EU B-ORG\nrejects O\n\n"
    # require_labels=False still reads the labels of a file that has them
    assert read_conll(_write(tmp_path, CONLL), require_labels=False)[0].labels == ["B-ORG", "O"]


@pytest.mark.parametrize("reader", [read_conll, read_conllu])
def test_empty_missing_and_non_utf8_files_are_named(tmp_path, reader):
    for text in ["", "\n\n  \n"] + (["-DOCSTART- -X- -X- O\n\n"] if reader is read_conll else []):
        path = _write(tmp_path, text)
        with pytest.raises(ValueError, match=rf"{path}: no sentences"):
            reader(path)
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        reader(missing)
    path = _write(tmp_path, b"caf\xe9 NN O\n")
    with pytest.raises(ValueError, match=rf"{path}: not UTF-8 text \(byte 3"):
        reader(path)


def test_conllu_skips_multiword_tokens_and_empty_nodes(tmp_path):
    path = _write(tmp_path, CONLLU, "f.conllu")
    first, second = read_conllu(path)
    assert first.words == ["Do", "n't", "go", "."] and first.labels == ["AUX", "PART", "VERB", "PUNCT"]
    assert first.lines == CONLLU_ROWS and first.start_line == 1
    assert (second.words, second.labels, second.start_line) == (["Hi"], ["INTJ"], 10)
    assert read_conllu(path, field="xpos")[0].labels == ["VBP", "RB", "VB", "."]
    with pytest.raises(ValueError, match="field must be one of"):
        read_conllu(path, field="deprel")


def test_conllu_malformed_token_lines_name_path_and_line(tmp_path):
    path = _write(tmp_path, CONLLU.replace("2\tn't\tnot\tPART", "2\tn't not\tPART"), "f.conllu")
    with pytest.raises(ValueError, match=rf"{path}:5: expected 10 tab-separated fields, found 9"):
        read_conllu(path)
    path = _write(tmp_path, CONLLU.replace("4\t.", "x\t."), "f.conllu")
    with pytest.raises(ValueError, match=rf"{path}:8: ID 'x'"):
        read_conllu(path)


def test_conllu_underscore_labels(tmp_path):
    path = _write(tmp_path, CONLLU.replace("\tPART\t", "\t_\t"), "f.conllu")
    for require_labels in (True, False):  # one "_" among real tags is an error either way
        with pytest.raises(ValueError, match=rf"{path}:5: upos is '_'"):
            read_conllu(path, require_labels=require_labels)
    unlabelled = "\n".join(
        "\t".join(
            f if i != 3 or not line.split("\t")[0].isdigit() else "_" for i, f in enumerate(line.split("\t"))
        )
        for line in CONLLU.split("\n")
    )
    path = _write(tmp_path, unlabelled, "f.conllu")
    with pytest.raises(ValueError, match=rf"{path}:4: upos is '_'"):
        read_conllu(path)
    data = read_conllu(path, require_labels=False)
    assert [s.labels for s in data] == [None, None] and data[0].words == ["Do", "n't", "go", "."]
    assert format_conllu(data[0], ["AUX", "PART", "VERB", "PUNCT"]) == "\n".join(CONLLU_ROWS) + "\n\n"


def test_format_round_trip_and_predictions(tmp_path):
    path = _write(tmp_path, "EU  NNP B-NP\tB-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER")
    data = read_conll(path)
    assert "".join(format_conll(s, s.labels, column=-1) for s in data) == path.read_text() + "\n\n"
    assert format_conll(data[0], ["O", "B-MISC"], column=-1) == "EU  NNP B-NP\tO\nrejects VBZ B-VP B-MISC\n\n"
    assert format_conll(data[0], ["X", "Y"], column=1) == "EU  X B-NP\tB-ORG\nrejects Y B-VP O\n\n"
    with pytest.raises(ValueError, match=rf"{path}:1: 1 predicted tags for 2 words"):
        format_conll(data[0], ["O"], column=-1)
    with pytest.raises(ValueError, match="without whitespace"):
        format_conll(data[0], ["O", "B MISC"], column=-1)
    conllu = read_conllu(_write(tmp_path, CONLLU, "f.conllu"))
    written = format_conllu(conllu[0], ["A", "B", "C", "D"], field="xpos").split("\n")
    assert written[:3] == CONLLU_ROWS[:3] and written[6] == CONLLU_ROWS[6] and written[-2:] == ["", ""]
    assert [line.split("\t")[4] for line in written[3:6] + written[7:8]] == ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="3 predicted tags for 4 words"):
        format_conllu(conllu[0], ["A", "B", "C"])


def test_plain_text_sentences_and_word_tag_output(tmp_path):
    path = _write(tmp_path, "Peter  Blackburn flew\tto Brussels .\r\n\n   \nThe EU said no")
    first, second = read_sentence_lines(path)
    assert first.words == ["Peter", "Blackburn", "flew", "to", "Brussels", "."] and first.labels is None
    assert (first.start_line, second.start_line, second.words) == (1, 4, ["The", "EU", "said", "no"])
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert format_word_tags(first, tags) == "".join(f"{w}\t{t}\n" for w, t in zip(first.words, tags)) + "\n"
    with pytest.raises(ValueError, match=rf"{path}:4: 3 predicted tags for 4 words"):
        format_word_tags(second, ["O"] * 3)
    with pytest.raises(ValueError, match=rf"{path}: no sentences"):
        read_sentence_lines(_write(tmp_path, "\n \n"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_sentence_lines(tmp_path / "missing.txt")


def test_word_line_numbers(tmp_path):
    conll = read_conll(_write(tmp_path, CONLL))
    assert [conll[1].word_line(i) for i in range(2)] == [6, 7]
    conllu = read_conllu(_write(tmp_path, CONLLU, "f.conllu"))
    # comments and the multiword line 3 are not words; the empty node (line 7) sits between words 3 and 4
    assert [conllu[0].word_line(i) for i in range(4)] == [4, 5, 6, 8]
    assert conllu[1].word_line(0) == 11


def _tagging(minilm_dir, tmp_path, train: str, name: str = "train.txt", **kwargs) -> TaggingDataModule:
    return TaggingDataModule(
        tokenizer=str(minilm_dir), train_file=str(_write(tmp_path, train, name)), **kwargs
    )


def test_unseen_validation_and_test_tags_name_the_word_line(minilm_dir, tmp_path):
    data = _tagging(minilm_dir, tmp_path, CONLL)
    data.files["test"] = str(_write(tmp_path, "Paris NNP B-NP B-LOC\nis VBZ B-VP O\n", "test.txt"))
    with pytest.raises(
        ValueError, match=r"test\.txt:1: label 'B-LOC' is not in the training label set \['O', "
    ):
        data.setup("test")
    data.files["validate"] = str(
        _write(tmp_path, "EU NNP B-NP B-ORG\n\nin IN B-PP O\nParis NNP B-NP B-GPE\n", "val.txt")
    )
    with pytest.raises(ValueError, match=r"val\.txt:4: label 'B-GPE' is not in the training label set"):
        data.setup("validate")
    ud = _tagging(minilm_dir, tmp_path, CONLLU, "train.conllu", format="conllu")
    ud.files["test"] = str(_write(tmp_path, CONLLU.replace("4\t.\t.\tPUNCT", "4\t.\t.\tSYM"), "test.conllu"))
    with pytest.raises(ValueError, match=r"test\.conllu:8: label 'SYM' is not in the training label set"):
        ud.setup("test")


def test_plain_text_predict_file_is_tagged_word_by_word(minilm_dir, tmp_path):
    data = _tagging(minilm_dir, tmp_path, CONLL, predict_format="text")
    data.files["predict"] = str(
        _write(tmp_path, "Peter Blackburn visited Paris .\n\nEU rejects it\n", "new.txt")
    )
    data.setup("predict")
    items = data._datasets["predict"].items
    assert [max(e["word_index"]) + 1 for e in items] == [5, 3]  # every word has a first subword
    assert data.format_prediction(1, ["B-ORG", "O", "O"]) == "EU\tB-ORG\nrejects\tO\nit\tO\n\n"
    # the default reads the predict file in the training format: the same lines are one-word-per-line CoNLL
    same = _tagging(minilm_dir, tmp_path, CONLL)
    same.files["predict"] = data.files["predict"]
    with pytest.raises(ValueError, match=r"new\.txt:3: expected 5 columns, found 3"):
        same.setup("predict")


@pytest.mark.parametrize("argument", ["batch_size", "eval_batch_size", "max_seq_len"])
def test_tagging_sizes_must_be_positive(argument):
    with pytest.raises(ValueError, match=f"^TaggingDataModule: {argument} must be a positive integer, got 0"):
        TaggingDataModule(tokenizer="unused", **{argument: 0})
