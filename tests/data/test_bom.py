"""A UTF-8 byte-order mark (what Excel's "CSV UTF-8" and Notepad write first) is not text: every reader of
zoo.data reads a BOM-prefixed file exactly as the same file without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zoo.data.classification import read_table
from zoo.data.conll import read_conll, read_conllu
from zoo.data.corpus import read_text, read_text_blocks
from zoo.data.documents import read_documents
from zoo.data.labelled import read_lines
from zoo.data.parallel import read_pairs
from zoo.data.squad import read_question_lines, read_squad
from zoo.data.summarization import read_text_fields
from zoo.data.wordpiece import load_wordpiece

BOM = b"\xef\xbb\xbf"
TSV = "sentence\tlabel\r\ngood film\tpos\r\nbad film\tneg\r\n"  # CRLF too, as Excel writes
CSV = 'sentence,label\n"good, film",pos\nbad film,neg\n'
JSONL = '{"sentence": "good film", "label": "pos"}\n{"sentence": "bad film", "label": "neg"}\n'
CONLL = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
CONLLU = (
    "# text = Hi there\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t0:root\t_\n"
    "2\tthere\tthere\tADV\tRB\t_\t1\tadvmod\t_\t_\n\n"
)
SQUAD = (
    '{"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [{"id": "q1", '
    '"question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}'
)
QUESTIONS = '{"question": "Where is Paris?", "context": "Paris is in France."}\n'
DIALOGSUM = '{"dialogue": "#Person1#: Hi.", "summary": "They greet."}\n'
DOCUMENTS = "First sentence. Second one.\nMore of it.\n\nAnother document.\n"

READERS: dict[str, tuple[str, str, Callable[[Path], Any]]] = {
    "tsv": ("sst2.tsv", TSV, lambda p: read_table(p, ["sentence", "label"])),
    "csv": ("sst2.csv", CSV, lambda p: read_table(p, ["sentence", "label"])),
    "jsonl-table": ("sst2.jsonl", JSONL, lambda p: read_table(p, ["sentence", "label"])),
    "conll": ("train.txt", CONLL, read_conll),
    "conllu": ("train.conllu", CONLLU, read_conllu),
    "squad-json": ("dev.json", SQUAD, read_squad),
    "squad-question-lines": ("questions.jsonl", QUESTIONS, read_question_lines),
    "dialogsum-jsonl": ("dev.jsonl", DIALOGSUM, lambda p: read_text_fields(p, ("dialogue", "summary"))),
    "predict-lines": ("predict.txt", "good film\nbad film\n", read_lines),
    "documents": ("corpus.txt", DOCUMENTS, read_documents),
    "documents-conllu": ("corpus.conllu", CONLLU, read_documents),
    "plain-text": ("corpus.txt", DOCUMENTS, read_text),
    "plain-text-blocks": ("corpus.txt", DOCUMENTS * 20, lambda p: "".join(read_text_blocks(p, 16))),
}


@pytest.mark.parametrize("kind", READERS)
def test_a_bom_prefixed_file_reads_as_the_file_without_it(tmp_path, kind):
    name, text, read = READERS[kind]
    plain, marked = tmp_path / "plain" / name, tmp_path / "bom" / name
    for path, prefix in ((plain, b""), (marked, BOM)):
        path.parent.mkdir()
        path.write_bytes(prefix + text.encode("utf-8"))
    expected = read(plain)
    assert expected  # the reader read something
    assert _without_folder(read(marked), marked.parent) == _without_folder(expected, plain.parent)


def test_a_bom_prefixed_parallel_pair_keeps_its_first_line(tmp_path):
    de, en = tmp_path / "train.de", tmp_path / "train.en"
    de.write_bytes(BOM + "Zwei junge Männer.\nEin Hund.\n".encode())
    en.write_bytes(BOM + b"Two young men.\nA dog.\n")
    assert read_pairs([de, en]) == (["Zwei junge Männer.", "Ein Hund."], ["Two young men.", "A dog."])


def test_a_bom_prefixed_vocab_txt_keeps_its_first_token(tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "film", "good"]
    (tmp_path / "vocab.txt").write_bytes(BOM + "\n".join(tokens).encode() + b"\n")
    assert load_wordpiece(tmp_path).token_to_id("[PAD]") == 0


def test_a_bom_only_at_the_start_is_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(BOM + b"a\n" + BOM + b"b\n")  # inside the text it is a character (U+FEFF) like any
    assert read_text(path) == "a\n\ufeffb\n"
    assert "".join(read_text_blocks(path, 1)) == read_text(path)


def _without_folder(value: Any, folder: Path) -> str:
    """``value``'s repr with the file's folder left out (a record may name its file)."""
    return repr(value).replace(str(folder), "DIR")
