"""Documents from text files: each a list of lines (sentences or paragraphs), in three formats.

``blank_lines`` (a blank line ends a document), ``wikitext`` (WikiText's `` = Title = `` lines start
documents) and ``conllu`` (Universal Dependencies' ``# newdoc`` and ``# text =`` comments); files are
read through `zoo.data.corpus.read_text` (UTF-8, BOM dropped, universal newlines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from zoo.data.corpus import read_text

DocumentFormat = Literal["auto", "blank_lines", "wikitext", "conllu"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z])")
_WIKITEXT_MARKUP = {" @-@ ": "-", " @,@ ": ",", " @.@ ": ".", "<unk>": "[UNK]"}


def read_documents(path: Path, document_format: DocumentFormat = "auto") -> list[list[str]]:
    """The documents of one file, each a list of lines (sentences or paragraphs).

    Formats: ``blank_lines`` (a blank line ends a document); ``wikitext`` (WikiText's `` = Title = ``
    lines start documents, `` = = Section = = `` lines are dropped, blank lines ignored, ``@-@`` markup
    undone and ``<unk>`` read as ``[UNK]``); ``conllu`` (``# newdoc`` starts a document, ``# text = ...``
    gives a sentence). ``auto`` picks ``conllu`` for ``*.conllu``, ``wikitext`` for ``*.tokens``, else
    ``blank_lines``.
    """
    if document_format == "auto":
        document_format = {".conllu": "conllu", ".tokens": "wikitext"}.get(path.suffix, "blank_lines")
    text = read_text(path)
    if document_format == "conllu":
        return _conllu_documents(text)
    if document_format == "wikitext":
        return _wikitext_documents(text)
    if document_format == "blank_lines":
        return _split_documents((line.strip() for line in text.splitlines()), lambda line: not line)
    raise ValueError(
        f"unknown document_format {document_format!r}; choose auto, blank_lines, wikitext, conllu"
    )


def _split_documents(lines: Iterator[str], starts_document: Callable[[str], bool]) -> list[list[str]]:
    documents: list[list[str]] = [[]]
    for line in lines:
        if starts_document(line):
            documents.append([])
        elif line:
            documents[-1].append(line)
    return [d for d in documents if d]


def _wikitext_documents(text: str) -> list[list[str]]:
    def clean(line: str) -> str:
        if line.startswith("= ="):  # section heading
            return ""
        for markup, plain in _WIKITEXT_MARKUP.items():
            line = line.replace(markup, plain)
        return line

    lines = (clean(line.strip()) for line in text.splitlines())
    return _split_documents(lines, lambda line: line.startswith("= ") and line.endswith(" ="))


def _conllu_documents(text: str) -> list[list[str]]:
    lines = (
        line.split("=", 1)[1].strip() if line.startswith("# text =") else line
        for line in text.splitlines()
        if line.startswith(("# text =", "# newdoc"))
    )
    return _split_documents(lines, lambda line: line.startswith("# newdoc"))


def split_sentences(line: str) -> list[str]:
    """Cut a paragraph after ``.``, ``!`` or ``?`` followed by a capitalised word (a cheap heuristic)."""
    return [s for s in _SENTENCE_END.split(line) if s.strip()]
