"""Tagged-sentence files: CoNLL-2003 style columns and CoNLL-U, read into sentences and written back.

The CoNLL and CoNLL-U readers keep every sentence's original lines, so predictions can be written back
in the input's own format (``format_conll`` / ``format_conllu``) and scored by the usual external tools.
Plain text (one sentence per line, `read_sentence_lines`) is written back as ``word<TAB>tag`` lines
(`format_word_tags`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from zoo.data.corpus import read_text
from zoo.data.labelled import read_lines

CONLLU_FIELDS = {"upos": 3, "xpos": 4}
"""Column index of each CoNLL-U field a tagger can predict (``ID FORM LEMMA UPOS XPOS ...``)."""

_FIELD = re.compile(r"\S+")
_CONLLU_ID = re.compile(r"\d+(?:[-.]\d+)?")


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
    """One sentence of a tagged file.

    Args:
        words: The sentence's words (CoNLL-U: syntactic words; multiword tokens and empty nodes left out).
        labels: One tag per word, or ``None`` when the file has no labels (prediction input).
        lines: The sentence's original lines without newlines, including CoNLL-U comments, multiword-token
            and empty-node lines; ``format_conll`` / ``format_conllu`` write predictions back into them.
        start_line: 1-based line number of the sentence's first line in ``path``.
        path: The file the sentence was read from.
    """

    words: list[str]
    labels: list[str] | None
    lines: list[str]
    start_line: int
    path: str

    def word_line(self, index: int) -> int:
        """1-based line number in ``path`` of word ``index`` (CoNLL-U: its syntactic-word line)."""
        if len(self.lines) == len(self.words):  # CoNLL: one line per word
            return self.start_line + index
        rows = [n for n, line in enumerate(self.lines) if _is_word_line(line.split("\t"))]
        return self.start_line + (rows[index] if index < len(rows) else 0)


def read_conll(
    path: str | os.PathLike[str], *, column: int = -1, require_labels: bool = True
) -> list[TaggedSentence]:
    """Read a CoNLL-2003 style file: one ``WORD POS CHUNK NER`` line per token, blank lines between sentences.

    ``-DOCSTART-`` lines are skipped (and so is the blank line after them); the last sentence may end
    without a newline. Every token line must have as many whitespace-separated columns as the first.
    ``-DOCSTART-`` lines belong to no sentence, so ``format_conll`` does not write them back.

    Args:
        path: The file to read (UTF-8).
        column: Python index of the label column: ``-1`` NER, ``1`` POS, ``2`` chunk in CoNLL-2003.
        require_labels: If False, a file with only the word column is accepted and gives ``labels=None``.

    Returns:
        The sentences in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is empty, not UTF-8, or malformed; the message gives ``path:line``.
    """
    path = str(path)
    num_columns: int | None = None
    sentences = []
    for block in _blocks(path, skip=lambda line: line.split(maxsplit=1)[0] == "-DOCSTART-"):
        rows = []
        for lineno, line in block:
            fields = line.split()
            if num_columns is None:
                num_columns = len(fields)
                _check_column(path, lineno, num_columns, column=column, require_labels=require_labels)
            elif len(fields) != num_columns:
                raise ValueError(f"{path}:{lineno}: expected {num_columns} columns, found {len(fields)}")
            rows.append(fields)
        labels = [fields[column] for fields in rows] if num_columns > 1 else None
        sentences.append(_sentence(path, block, words=[fields[0] for fields in rows], labels=labels))
    return _nonempty(path, sentences)


def read_conllu(
    path: str | os.PathLike[str], *, field: Literal["upos", "xpos"] = "upos", require_labels: bool = True
) -> list[TaggedSentence]:
    """Read a CoNLL-U file (https://universaldependencies.org/format.html) for tagging.

    Words and labels come from the syntactic-word lines; ``#`` comments, multiword-token lines (ID ``3-4``)
    and empty nodes (ID ``5.1``) are skipped for them but kept in ``lines``.

    Args:
        path: The file to read (UTF-8).
        field: The label field, ``"upos"`` or ``"xpos"``.
        require_labels: If False, a file whose label field is ``_`` on every word gives ``labels=None``
            (a ``_`` on only some words is still an error).

    Returns:
        The sentences in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is empty, not UTF-8, or malformed (a token line without 10 tab-separated
            fields, a ``_`` label where labels are required); the message gives ``path:line``.
    """
    path = str(path)
    index = _conllu_index(field)
    sentences, blanks = [], []  # blanks: line numbers of the words whose label is "_"
    for block in _blocks(path):
        words, labels = [], []
        for lineno, fields in _conllu_words(path, block):
            words.append(fields[1])
            labels.append(fields[index])
            if fields[index] == "_":
                blanks.append(lineno)
        if not words:
            raise ValueError(f"{path}:{block[0][0]}: sentence has no word lines")
        sentences.append(_sentence(path, block, words=words, labels=labels))
    sentences = _nonempty(path, sentences)
    if blanks and (require_labels or len(blanks) < sum(len(s.words) for s in sentences)):
        # one "_" among given labels is a hole in the data, not an unlabelled file
        why = "labels are required" if require_labels else "other words have one"
        raise ValueError(f"{path}:{blanks[0]}: {field} is '_' (no label) but {why}")
    if blanks:
        sentences = [dataclasses.replace(s, labels=None) for s in sentences]
    return sentences


def read_sentence_lines(path: str | os.PathLike[str]) -> list[TaggedSentence]:
    """Read plain text for prediction: one sentence per line, words separated by whitespace, no labels.

    Blank lines are skipped. Write predictions back with `format_word_tags`.

    Args:
        path: The file to read (UTF-8).

    Returns:
        The sentences in file order, each with ``labels=None`` and its line as ``lines``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is empty or not UTF-8.
    """
    path = str(path)
    sentences = [
        TaggedSentence(words=line.split(), labels=None, lines=[line], start_line=number, path=path)
        for number, line in read_lines(Path(path))
    ]
    return _nonempty(path, sentences)


def format_word_tags(sentence: TaggedSentence, predicted: list[str]) -> str:
    """One ``word<TAB>tag`` line per word, then a blank line (the two-column CoNLL layout).

    Args:
        sentence: Any sentence, e.g. from `read_sentence_lines`.
        predicted: One tag per word.
    """
    _check_predicted(sentence, predicted)
    return "".join(f"{word}\t{tag}\n" for word, tag in zip(sentence.words, predicted)) + "\n"


def format_conll(sentence: TaggedSentence, predicted: list[str], *, column: int) -> str:
    """The sentence's lines with the label column replaced by ``predicted``, then a blank line.

    Lines that hold only the word get the prediction appended as a second column; the original spacing of
    the other columns is kept.

    Args:
        sentence: A sentence from ``read_conll``.
        predicted: One tag per word.
        column: The label column, as given to ``read_conll``.
    """
    _check_predicted(sentence, predicted)
    out = []
    for line, tag in zip(sentence.lines, predicted):
        spans = [m.span() for m in _FIELD.finditer(line)]
        if len(spans) == 1:
            out.append(f"{line} {tag}")
            continue
        try:
            start, end = spans[column]
        except IndexError:
            raise ValueError(f"column {column} out of range for a line with {len(spans)} columns") from None
        out.append(line[:start] + tag + line[end:])
    return "\n".join(out) + "\n\n"


def format_conllu(
    sentence: TaggedSentence, predicted: list[str], *, field: Literal["upos", "xpos"] = "upos"
) -> str:
    """The sentence's CoNLL-U lines with ``field`` of every word line set to ``predicted``, then a blank line.

    Comments, multiword-token and empty-node lines are written unchanged.

    Args:
        sentence: A sentence from ``read_conllu``.
        predicted: One tag per word.
        field: The label field, as given to ``read_conllu``.
    """
    _check_predicted(sentence, predicted)
    index = _conllu_index(field)
    tags = iter(predicted)
    out = []
    for line in sentence.lines:
        fields = line.split("\t")
        if _is_word_line(fields):
            fields[index] = next(tags)
            line = "\t".join(fields)
        out.append(line)
    return "\n".join(out) + "\n\n"


def _blocks(path: str, *, skip: Callable[[str], bool] | None = None) -> Iterator[list[tuple[int, str]]]:
    """Yield each run of non-blank lines as ``[(line number, line), ...]``.

    Lines where ``skip`` is true end the current run, like a blank line, and are dropped.
    """
    text = read_text(Path(path))
    block: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip() and not (skip and skip(line)):
            block.append((lineno, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _conllu_words(path: str, block: list[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of the block's syntactic-word lines, validating every token line."""
    for lineno, line in block:
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(f"{path}:{lineno}: expected 10 tab-separated fields, found {len(fields)}")
        if not _CONLLU_ID.fullmatch(fields[0]):
            raise ValueError(f"{path}:{lineno}: ID {fields[0]!r} is not N, N-M or N.M")
        if _is_word_line(fields):
            yield lineno, fields


def _is_word_line(fields: list[str]) -> bool:
    """A syntactic word: 10 fields and an integer ID (not a comment, range ``3-4`` or empty node ``5.1``)."""
    return len(fields) == 10 and fields[0].isdigit()


def _check_column(path: str, lineno: int, num_columns: int, *, column: int, require_labels: bool) -> None:
    if num_columns == 1:
        if require_labels:
            raise ValueError(f"{path}:{lineno}: only a word column, no labels (pass require_labels=False)")
    elif not -num_columns <= column < num_columns or column % num_columns == 0:
        raise ValueError(
            f"{path}:{lineno}: column {column} is not a label column of a line with {num_columns} columns"
        )


def _conllu_index(field: str) -> int:
    if field not in CONLLU_FIELDS:
        raise ValueError(f"field must be one of {sorted(CONLLU_FIELDS)}, got {field!r}")
    return CONLLU_FIELDS[field]


def _check_predicted(sentence: TaggedSentence, predicted: list[str]) -> None:
    if len(predicted) != len(sentence.words):
        raise ValueError(
            f"{sentence.path}:{sentence.start_line}: {len(predicted)} predicted tags for "
            f"{len(sentence.words)} words"
        )
    bad = [tag for tag in predicted if not _FIELD.fullmatch(tag)]
    if bad:
        raise ValueError(f"predicted tags must be non-empty and without whitespace, got {bad[0]!r}")


def _sentence(
    path: str, block: list[tuple[int, str]], *, words: list[str], labels: list[str] | None
) -> TaggedSentence:
    return TaggedSentence(
        words=words, labels=labels, lines=[line for _, line in block], start_line=block[0][0], path=path
    )


def _nonempty(path: str, sentences: list[TaggedSentence]) -> list[TaggedSentence]:
    if not sentences:
        raise ValueError(f"{path}: no sentences (empty file?)")
    return sentences
