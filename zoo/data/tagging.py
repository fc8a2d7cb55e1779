"""Word-level tagging data (NER, POS) from CoNLL-2003 style files or CoNLL-U, aligned to subwords."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from tokenizers import Tokenizer

from zoo.data.batch import IGNORE_INDEX
from zoo.data.conll import (
    TaggedSentence,
    format_conll,
    format_conllu,
    format_word_tags,
    read_conll,
    read_conllu,
    read_sentence_lines,
)
from zoo.data.labelled import LabelledDataModule


class TaggingDataModule(LabelledDataModule):
    """Sentences with one tag per word, for `zoo.tasks.TokenClassification`.

    Each word is split into subwords by the pretrained model's tokenizer; the word's label goes on its
    first subword and ``-100`` on the others (and on [CLS]/[SEP]), so the loss and the metrics count each
    word once. Batches also carry ``word_index`` (B, T): the word each first subword starts, -1 elsewhere,
    which maps predictions back to words. The label set comes from ``train_file`` (``O`` first, the rest
    sorted) and is saved in checkpoints; the CLI links ``num_labels`` and ``label_names`` to the model.

    Sentences longer than ``max_seq_len`` subwords are truncated (their last words get no prediction:
    ``zoo predict`` writes the first label, ``O`` for NER, for them); words the tokenizer turns into no
    subword at all (e.g. only control characters) are treated the same way. Both are counted in the log.

    A validation or test tag absent from the training file stops with ``path:line`` of its word.

    Args:
        format: ``conll`` (CoNLL-2003 style whitespace columns) or ``conllu``.
        column: ``conll`` only: Python index of the label column (-1 NER, 1 POS, 2 chunk).
        field: ``conllu`` only: ``upos`` or ``xpos``.
        predict_format: ``same``: ``predict_file`` is in ``format``, its label column absent (CoNLL:
            words only) or ``_`` (CoNLL-U), and is written back in that format with the predicted tags;
            ``text``: plain text, one sentence per line, split into words at whitespace (blank lines
            skipped), written back as ``word<TAB>tag`` lines with a blank line after each sentence.
        max_seq_len: Longest encoded sentence in subwords, [CLS] and [SEP] included.
        **kwargs: Other arguments: `zoo.data.labelled.LabelledDataModule` (forwarded): ``tokenizer``,
            ``train_file`` (its tags make the label set), ``val_file``, ``test_file``, ``predict_file``
            (the sentences to tag, read as ``predict_format`` says; ``zoo predict`` writes them back with
            the predicted tags), ``batch_size``, ``batching``, ``eval_batch_size``, ``seed``,
            ``num_workers``.
    """

    sequence_keys = {"labels": IGNORE_INDEX, "word_index": -1}

    def __init__(
        self,
        *,
        format: Literal["conll", "conllu"] = "conll",
        column: int = -1,
        field: Literal["upos", "xpos"] = "upos",
        predict_format: Literal["same", "text"] = "same",
        max_seq_len: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_seq_len=max_seq_len, **kwargs)
        self.format = format
        self.column = column
        self.field = field
        self.predict_format = predict_format
        self._sentences: dict[str, list[TaggedSentence]] = {}

    def read(self, path: Path, *, require_labels: bool = True) -> list[TaggedSentence]:
        """The sentences of ``path`` in this module's ``format``."""
        if self.format == "conllu":
            return read_conllu(path, field=self.field, require_labels=require_labels)
        return read_conll(path, column=self.column, require_labels=require_labels)

    def _read_labels(self, path: Path) -> list[str]:
        counts = Counter(label for s in self.read(path) for label in s.labels or ())
        return sorted(counts, key=lambda label: (label != "O", label))

    def _encode(self, path: Path, split: str) -> list[dict[str, Any]]:
        labelled = split != "predict"
        if not labelled and self.predict_format == "text":
            sentences = read_sentence_lines(path)
        else:
            sentences = self.read(path, require_labels=labelled)
        self._sentences[split] = sentences
        tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        tokenizer.enable_truncation(self.max_seq_len)
        encodings = tokenizer.encode_batch([s.words for s in sentences], is_pretokenized=True)
        examples, lost = [], 0
        for index, (sentence, enc) in enumerate(zip(sentences, encodings)):
            labels, word_index, seen = [], [], set()
            for word in enc.word_ids:
                first = word is not None and word not in seen
                seen.add(word)
                word_index.append(word if first else -1)
                if first and labelled and sentence.labels is not None:
                    where = f"{sentence.path}:{sentence.word_line(word)}"
                    labels.append(self.label_id(sentence.labels[word], where))
                else:
                    labels.append(IGNORE_INDEX)
            lost += len(sentence.words) - len(seen - {None})
            examples.append(
                {
                    "input_ids": enc.ids,
                    "labels": labels,
                    "word_index": word_index,
                    "index": index,
                    "truncated": bool(enc.overflowing),
                }
            )
        if lost:
            rank_zero_warn(
                f"{path}: {lost} words got no subword (truncated sentence or dropped characters); they are "
                "not scored, and `zoo predict` writes the first label for them"
            )
        return examples

    def format_prediction(self, index: int, prediction: list[str]) -> str:
        """The lines ``zoo predict`` writes for sentence ``index`` of ``predict_file``.

        Args:
            index: The sentence's position in ``predict_file`` (0-based).
            prediction: One tag per word that got a subword (`zoo.tasks.TokenClassification.predict_step`);
                words past a truncation get the first label.

        Returns:
            ``predict_format: same``: the sentence's own lines with the tags (`zoo.data.conll.format_conll`,
            `zoo.data.conll.format_conllu`); ``text``: ``word<TAB>tag`` lines
            (`zoo.data.conll.format_word_tags`). A blank line follows each sentence.
        """
        sentence = self._sentences["predict"][index]
        labels = list(prediction) + [self.label_names[0]] * (len(sentence.words) - len(prediction))
        if self.predict_format == "text":
            return format_word_tags(sentence, labels)
        if self.format == "conllu":
            return format_conllu(sentence, labels, field=self.field)
        return format_conll(sentence, labels, column=self.column)
