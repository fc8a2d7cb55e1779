"""Labelled text tables (TSV, CSV, JSON lines) for sequence classification and regression."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer

from zoo.data.labelled import LabelledDataModule, read_lines
from zoo.data.records import Record, read_records
from zoo.errors import check_positive

ProblemType = Literal["single_label", "multi_label", "regression"]
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def read_table(path: Path, columns: Sequence[str]) -> list[Record]:
    """Rows of a ``.tsv``, ``.csv`` or ``.jsonl`` table with a header (or keys) naming ``columns``, read by
    `zoo.data.records.read_records` (blank lines skipped, errors at ``path:line``).

    Returns:
        ``(line_number, row)`` pairs; each row maps the table's columns (``columns`` among them) to values.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A ``.txt`` file (one text per line, not a table), and the errors of `read_records`.
    """
    if path.suffix.lower() == ".txt" and path.is_file():
        raise ValueError(
            f"{path}: a .txt file holds one text per line, no {list(columns)} columns; use a .tsv, .csv or "
            ".jsonl table (a .txt is accepted as predict_file)"
        )
    return read_records(path, columns)


def check_label_kinds(path: Path, labels: Sequence[tuple[int, str]], column: str) -> None:
    """A label column holds numbers (``0``, ``1``) or words (``negative``), not both: a few words among
    numbers (or the reverse) is a data error, not a bigger label set.

    Args:
        path: The file, for the message.
        labels: ``(line_number, label)`` pairs in file order.
        column: The label column, for the message.

    Raises:
        ValueError: ``path:LINE: ...`` at the first label of the rarer kind, naming both kinds.
    """
    kinds: dict[str, list[tuple[int, str]]] = {"number": [], "word": []}
    for line, label in labels:
        kinds["number" if _NUMBER.fullmatch(label) else "word"].append((line, label))
    if not (kinds["number"] and kinds["word"]):
        return
    # the rarer kind is the odd one; on a tie, the kind that shows up later
    odd = min(kinds, key=lambda kind: (len(kinds[kind]), -kinds[kind][0][0]))
    usual = "word" if odd == "number" else "number"
    line, label = kinds[odd][0]
    example = kinds[usual][0][1]
    raise ValueError(
        f"{path}:{line}: label {label!r} is a {odd}, but {len(kinds[usual])} labels of column {column!r} "
        f"are {usual}s (e.g. {example!r}); a label column must not mix numbers and words"
    )


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


class TextClassificationDataModule(LabelledDataModule):
    """Sentences or sentence pairs with a label, from TSV/CSV/JSONL files.

    The label set is built from ``train_file`` (ids in sorted order, numerically for numbers) and saved
    in checkpoints; ``num_labels`` and ``label_names`` are linked to the model by the CLI. Batches are
    padded to their longest example, and training batches group similar lengths.

    Labels that are clearly wrong stop with ``path:line``: a validation or test label absent from the
    training file, and a label column that mixes numbers and words (see `check_label_kinds`).

    ``zoo predict`` (with `zoo.tasks.callbacks.PredictionWriter`) writes one line per example of
    ``predict_file``, in input order (see `format_prediction`).

    Args:
        text_column: Column of the text (e.g. GLUE SST-2's ``sentence``).
        text_pair_column: Column of the second text of a pair task (``None`` for single texts).
        label_column: Column of the label.
        problem_type: ``single_label`` (one class), ``multi_label`` (labels joined by ``label_separator``,
            in JSONL also a list) or ``regression`` (a number).
        label_separator: Separator of multi-label values.
        max_train_examples: Train on a seeded random subset of this size (``None``: all; the seed is
            ``seed``).
        **kwargs: Other arguments: `zoo.data.labelled.LabelledDataModule` (forwarded): ``tokenizer`` (a BERT
            ``vocab.txt``/``tokenizer.json`` or their directory, e.g. the Hugging Face model directory, or
            GPT-2's files), ``train_file`` (a labelled ``.tsv``, ``.csv`` or ``.jsonl`` table; it defines
            the label set), ``val_file``, ``test_file``, ``predict_file`` (a table with at least the text
            column(s), or a plain ``.txt`` file with one text per line, blank lines skipped: single texts
            only), ``max_seq_len``, ``batch_size``, ``batching``, ``eval_batch_size``, ``seed``,
            ``num_workers``.

    Raises:
        ValueError: A size that is not a positive integer or an empty ``label_separator`` (the message
            names the argument).
    """

    def __init__(
        self,
        *,
        text_column: str = "sentence",
        text_pair_column: str | None = None,
        label_column: str = "label",
        problem_type: ProblemType = "single_label",
        label_separator: str = ",",
        max_train_examples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive(type(self).__name__, max_train_examples=max_train_examples)
        if not label_separator:
            raise ValueError(f"{type(self).__name__}: label_separator must not be empty")
        self.text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
        self.label_column = label_column
        self.problem_type = problem_type
        self.label_separator = label_separator
        self.max_train_examples = max_train_examples

    def _read_labels(self, path: Path) -> list[str]:
        if self.problem_type == "regression":
            return [self.label_column]
        rows = read_table(path, [self.label_column])
        return _sorted_labels({name for _, name in self._label_strings(path, rows)})

    def _label_strings(self, path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, str]]:
        """``(line, label)`` of every label of ``rows`` (read with the label column), after checking that
        they do not mix numbers and words."""
        labels = [(line, name) for line, row in rows for name in self._split_labels(row[self.label_column])]
        check_label_kinds(path, labels, self.label_column)
        return labels

    def _split_labels(self, value: Any) -> list[str]:
        if self.problem_type == "single_label":
            return [str(value).strip()]
        if isinstance(value, list):
            return [str(v).strip() for v in value]
        return [v.strip() for v in str(value).split(self.label_separator) if v.strip()]

    def _read_rows(self, path: Path, labelled: bool) -> list[tuple[int, dict[str, Any]]]:
        """``(line, row)`` pairs of a table, or of a plain ``.txt`` predict file (one text per line)."""
        if not labelled and path.suffix.lower() == ".txt":
            if len(self.text_columns) > 1:
                raise ValueError(
                    f"{path}: a .txt predict_file holds one text per line, but this data has text pairs "
                    f"(text_pair_column={self.text_columns[1]!r}); use a table with both columns"
                )
            return [(line, {self.text_columns[0]: text}) for line, text in read_lines(path)]
        rows = read_table(path, self.text_columns + ([self.label_column] if labelled else []))
        if labelled and self.problem_type != "regression":
            self._label_strings(path, rows)  # a mixed column is named before any unknown label
        return rows

    def _encode(self, path: Path, split: str) -> list[dict[str, Any]]:
        labelled = split != "predict"
        rows = self._read_rows(path, labelled)
        if split == "fit" and self.max_train_examples is not None and len(rows) > self.max_train_examples:
            rows = random.Random(self.seed).sample(rows, self.max_train_examples)
        texts = []
        for line, row in rows:
            for column in self.text_columns:
                if not str(row[column]).strip():
                    raise ValueError(f"{path}:{line}: empty text in column {column!r}")
            texts.append(tuple(str(row[c]) for c in self.text_columns))
        tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        tokenizer.enable_truncation(self.max_seq_len)
        encodings = tokenizer.encode_batch([t if len(t) == 2 else t[0] for t in texts])
        examples = []
        for index, ((line, row), enc) in enumerate(zip(rows, encodings)):
            label = self._label(row[self.label_column], f"{path}:{line}") if labelled else None
            examples.append(
                {
                    "input_ids": enc.ids,
                    "token_type_ids": enc.type_ids,
                    "labels": label,
                    "index": index,
                    "truncated": bool(enc.overflowing),
                }
            )
        return examples

    def _label(self, value: Any, where: str) -> Any:
        if self.problem_type == "regression":
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: regression label {value!r} is not a number") from None
        names = self._split_labels(value)
        if self.problem_type == "single_label":
            return self.label_id(names[0], where)
        hot = [0.0] * self.num_labels
        for name in names:
            hot[self.label_id(name, where)] = 1.0
        return hot

    def format_prediction(self, index: int, prediction: float | list[tuple[str, float]]) -> str:
        """The line ``zoo predict`` writes for example ``index`` of ``predict_file``.

        Args:
            index: The example's position in ``predict_file`` (0-based, blank lines not counted).
            prediction: What `zoo.tasks.SequenceClassification.predict_step` returns for the example:
                ``(label name, probability)`` pairs, most probable first, or a number (regression).

        Returns:
            Tab-separated ``name<TAB>probability`` pairs (4 decimals) and a newline: for ``single_label``
            every label, so the first column is the predicted label and the second its probability; for
            ``multi_label`` the labels above the model's ``threshold`` (an empty line when none is); for
            ``regression`` the number alone (6 significant digits).
        """
        if isinstance(prediction, int | float):
            return f"{prediction:.6g}\n"
        return "\t".join(f"{name}\t{probability:.4f}" for name, probability in prediction) + "\n"
