"""Tables: records of a JSON Lines, TSV or CSV file, read by one set of rules.

The suffix picks the format: ``.jsonl`` (one JSON object per line), ``.tsv`` (tab-separated, no quoting,
as GLUE ships it) or ``.csv`` (quoted fields allowed, a quoted field may hold line breaks); the first line
of a TSV or CSV file names the columns. Every format is read through `zoo.data.corpus.read_text`: UTF-8,
a byte-order mark dropped, ``\\r\\n`` and ``\\r`` read as ``\\n``. A blank line (nothing but whitespace) is
not a record, wherever it is: before the header, between records or at the end. Errors name
``FILE:LINE``, the line where the record starts.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zoo.data.corpus import read_text

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")
"""The table formats, by file suffix (case ignored)."""

Record = tuple[int, dict[str, Any]]
"""``(line_number, fields)``: the 1-based line where a record starts, and its fields by column name
(TSV and CSV: strings; JSON Lines: any JSON value)."""


def read_records(path: Path, columns: Sequence[str] = ()) -> list[Record]:
    """The records of a table, in file order, blank lines skipped.

    Args:
        path: A ``.jsonl``, ``.tsv`` or ``.csv`` file.
        columns: Columns every record must have (a TSV/CSV header must name them; a JSON object must
            have them as keys). A record holds all its fields, not only these.

    Returns:
        ``(line_number, fields)`` pairs. In a TSV or CSV file whose header repeats a name, the first
        column of that name is the field.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not UTF-8 (byte offset) or binary (`zoo.data.corpus.read_text`), an unknown suffix,
            an empty TSV/CSV file; ``FILE:LINE: ...`` for a line that is not a JSON object, a header
            without a requested column, a row with more or fewer fields than the header, a JSON
            object without a requested key.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unknown table format {suffix!r}; use .tsv, .csv or .jsonl")
    text = read_text(path)
    if suffix == ".jsonl":
        return [_json_record(path, line, raw, columns) for line, raw in _lines(text)]
    rows = _tsv_rows(text) if suffix == ".tsv" else _csv_rows(path, text)
    header_line, header = next(rows, (0, []))
    if not header:
        raise ValueError(f"{path}: empty file (expected a header naming the columns)")
    header = [name.strip() for name in header]
    absent = [c for c in columns if c not in header]
    if absent:
        raise ValueError(f"{path}:{header_line}: no column {absent[0]!r}; the header has {header}")
    records = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise ValueError(f"{path}:{line}: {len(fields)} fields, but the header has {len(header)}")
        record: dict[str, Any] = {}
        for name, value in zip(header, fields):
            record.setdefault(name, value)
        records.append((line, record))
    return records


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of ``text`` with their numbers. Split on ``\\n`` only: `str.splitlines` also
    splits at U+2028, U+0085, form feeds ..., which a JSON string or a TSV field may hold."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def _json_record(path: Path, line: int, raw: str, columns: Sequence[str]) -> Record:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{line}: invalid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{line}: expected a JSON object, found {type(record).__name__}")
    absent = [c for c in columns if c not in record]
    if absent:
        raise ValueError(f"{path}:{line}: no key {absent[0]!r}; the object has {sorted(record)}")
    return line, record


def _tsv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    for number, line in _lines(text):
        yield number, line.split("\t")


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of a CSV text with the line each starts on; a quoted field may span lines."""
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text))
    start = 1
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as err:
            raise ValueError(f"{path}:{start}: malformed CSV ({err})") from None
        if fields is None:
            return
        if reader.line_num > start or lines[start - 1].strip():  # a one-line record may be blank
            yield start, fields
        start = reader.line_num + 1
