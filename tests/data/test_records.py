"""One table reader: a JSON Lines, TSV or CSV file gives the same records whatever its byte-order mark,
line ends or blank lines, and a bad line is named ``FILE:LINE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.data.records import read_records

BOM = b"\xef\xbb\xbf"
# the same two records in each format, each with a blank line at the start, between them (spaces only)
# and at the end; line 2 holds the first record, line 4 the second
TABLES = {
    "jsonl": '\n{"text": "good, film", "label": "pos"}\n   \n{"text": "bad film", "label": "neg"}\n\n',
    "tsv": "\ntext\tlabel\ngood, film\tpos\n   \nbad film\tneg\n\n",
    "csv": '\ntext,label\n"good, film",pos\n   \nbad film,neg\n\n',
}
LINES = {"jsonl": [2, 4], "tsv": [3, 5], "csv": [3, 5]}  # the header takes line 2 of TSV and CSV
RECORDS = [{"text": "good, film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


def _write(path: Path, text: str, *, bom: bool = False, newline: str = "\n") -> Path:
    path.write_bytes((BOM if bom else b"") + text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("kind", TABLES)
def test_every_format_reads_the_same_records(tmp_path, kind, bom, newline):
    path = _write(tmp_path / f"t.{kind}", TABLES[kind], bom=bom, newline=newline)
    records = read_records(path, ["text", "label"])
    assert [fields for _, fields in records] == RECORDS
    assert [line for line, _ in records] == LINES[kind]


def test_a_record_is_numbered_by_its_first_line(tmp_path):
    path = _write(tmp_path / "t.csv", 'text,label\n"two\n\nlines",pos\nthird,neg\n')
    records = read_records(path)
    assert records == [(2, {"text": "two\n\nlines", "label": "pos"}), (5, {"text": "third", "label": "neg"})]


def test_line_breaks_other_than_newline_stay_inside_a_record(tmp_path):
    text = "a\u2028b\x85c"  # str.splitlines() would cut here, and at a form feed
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "' + text + '"}\n', encoding="utf-8")
    assert read_records(path) == [(1, {"text": text})]
    tsv = _write(tmp_path / "t.tsv", f"text\tlabel\n{text}\x0cd\tpos\n")
    assert read_records(tsv) == [(2, {"text": text + "\x0cd", "label": "pos"})]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.jsonl", '{"text": "a"}\n\n{"text": \n', r":3: invalid JSON \(Expecting value, column 10\)"),
        ("t.jsonl", '{"text": "a"}\n["a"]\n', r":2: expected a JSON object, found list"),
        ("t.jsonl", '{"text": "a"}\n{"label": 1}\n', r":2: no key 'text'; the object has \['label'\]"),
        ("t.tsv", "text\tlabel\na\tpos\tx\n", r":2: 3 fields, but the header has 2"),
        ("t.csv", "text,label\n\nonly one field\n", r":3: 1 fields, but the header has 2"),
        ("t.tsv", "\nsentence\tlabel\n", r":2: no column 'text'; the header has \['sentence', 'label'\]"),
        ("t.csv", "\n  \n", r": empty file \(expected a header naming the columns\)"),
        ("t.json", "{}\n", r": unknown table format '\.json'; use \.tsv, \.csv or \.jsonl"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, text, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=f"^{path}{message}"):
        read_records(path, ["text"])


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_records(tmp_path / "missing.tsv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1\.csv: not UTF-8 text \(byte 8"):
        read_records(latin1)


def test_a_repeated_header_name_reads_its_first_column(tmp_path):
    path = _write(tmp_path / "t.tsv", "text\ttext\nfirst\tsecond\n")
    assert read_records(path, ["text"]) == [(2, {"text": "first"})]
