"""Multiple-choice questions (SWAG, HellaSwag, ARC-style): a context, K candidate endings, the gold index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import DataLoader

from zoo.data.classification import read_table
from zoo.data.collate import pad_batch
from zoo.data.labelled import Examples, LabelledDataModule, LengthBucketSampler
from zoo.data.resumable import ResumableSampler


def pad_choices(
    items: list[dict[str, Any]], *, pad_token_id: int, sequence_keys: dict[str, int] | None = None
) -> dict[str, Tensor]:
    """Collate multiple-choice examples: each holds K encoded (context, ending) pairs as lists of lists.

    Returns ``input_ids`` (right-padded with ``pad_token_id``), ``attention_mask`` and ``token_type_ids``
    (B, K, T), T the longest pair of the batch, and ``labels`` (B,) (when the examples have them) and
    ``index`` (B,). ``sequence_keys`` is accepted for the loader's signature and unused.

    Raises:
        ValueError: Examples of one batch with different numbers of candidates.
    """
    num_choices = {len(item["input_ids"]) for item in items}
    if len(num_choices) != 1:
        raise ValueError(f"a batch mixes questions with {sorted(num_choices)} candidates")
    (k,) = num_choices
    width = max(len(ids) for item in items for ids in item["input_ids"])
    shape = (len(items), k, width)
    batch = {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
        "token_type_ids": torch.zeros(shape, dtype=torch.long),
    }
    for b, item in enumerate(items):
        for c, (ids, types) in enumerate(zip(item["input_ids"], item["token_type_ids"])):
            batch["input_ids"][b, c, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][b, c, : len(ids)] = 1
            batch["token_type_ids"][b, c, : len(ids)] = torch.tensor(types)
    if items[0].get("labels") is not None:
        batch["labels"] = torch.tensor([item["labels"] for item in items])
    batch["index"] = torch.tensor([item["index"] for item in items])
    return batch


class MultipleChoiceDataModule(LabelledDataModule):
    """Multiple-choice questions from JSON Lines: one object per line with a context, a list of K
    candidate endings and the index of the right one, e.g.
    ``{"context": "She opens the fridge and", "endings": ["takes out the milk.", ...], "label": 0}``.

    Each (context, ending) pair is encoded as a sentence pair (BERT: ``[CLS] context [SEP] ending [SEP]``,
    segment ids 0 then 1), truncated to ``max_seq_len``. Batches hold ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` (B, K, T), ``labels`` (B,) (the gold index) and ``index`` (B,); see `pad_choices`
    and `zoo.tasks.MultipleChoice`. Every question of a file has as many endings as its first;
    ``num_labels`` is the training file's K and ``label_names`` are ``"0"`` .. ``"K-1"`` (saved with
    checkpoints, as the base class saves a label set).

    ``zoo predict`` writes one line per question of ``predict_file`` (its ``label`` may be absent), see
    `format_prediction`.

    Args:
        context_field: Key of the context (SWAG's first sentence, or a question).
        endings_field: Key of the list of candidate endings (answers).
        label_field: Key of the gold index (an integer, 0-based).
        **kwargs: `zoo.data.labelled.LabelledDataModule`'s arguments: ``tokenizer``, ``train_file``,
            ``val_file``, ``test_file``, ``predict_file`` (``.jsonl`` files), ``max_seq_len`` (per pair),
            ``batch_size`` (questions per step), ``batching`` (``bucketed`` or ``padded``; ``packed``
            is refused), ``eval_batch_size``, ``seed``, ``num_workers``.

    Raises:
        ValueError: ``batching: packed`` (the K pairs of a question stay side by side in a (K, T) block).
    """

    def __init__(
        self,
        *,
        context_field: str = "context",
        endings_field: str = "endings",
        label_field: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.batching == "packed":
            raise ValueError(
                f"{type(self).__name__}: batching 'packed' is not supported (a question's K pairs form one "
                "(K, T) block); use 'bucketed' or 'padded'"
            )
        self.context_field = context_field
        self.endings_field = endings_field
        self.label_field = label_field

    def _read_labels(self, path: Path) -> list[str]:
        rows = self._read_rows(path, labelled=False)
        return [str(i) for i in range(len(rows[0][1][self.endings_field]))] if rows else []

    def _read_rows(self, path: Path, labelled: bool) -> list[tuple[int, dict[str, Any]]]:
        """``(line, row)`` pairs of a ``.jsonl`` file, each with a non-empty context and a list of
        non-empty endings, as many as the file's first question has."""
        if path.suffix.lower() != ".jsonl":
            raise ValueError(f"{path}: multiple-choice questions are read from .jsonl files")
        fields = [self.context_field, self.endings_field] + ([self.label_field] if labelled else [])
        rows = read_table(path, fields)
        for line, row in rows:
            endings = row[self.endings_field]
            if not isinstance(endings, list) or not endings:
                raise ValueError(f"{path}:{line}: {self.endings_field!r} must be a non-empty list of texts")
            first_line, first = rows[0][0], len(rows[0][1][self.endings_field])
            if len(endings) != first:
                raise ValueError(f"{path}:{line}: {len(endings)} endings, but line {first_line} has {first}")
            texts = [row[self.context_field], *endings]
            if any(not isinstance(t, str) or not t.strip() for t in texts):
                raise ValueError(f"{path}:{line}: empty or non-text context or ending")
        return rows

    def _encode(self, path: Path, split: str) -> list[dict[str, Any]]:
        labelled = split != "predict"
        rows = self._read_rows(path, labelled)
        tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        tokenizer.enable_truncation(self.max_seq_len)
        pairs = [(row[self.context_field], ending) for _, row in rows for ending in row[self.endings_field]]
        encodings = iter(tokenizer.encode_batch(pairs))
        examples = []
        for index, (line, row) in enumerate(rows):
            encoded = [next(encodings) for _ in row[self.endings_field]]
            where = f"{path}:{line}"
            label = self._label(row[self.label_field], len(encoded), where) if labelled else None
            examples.append(
                {
                    "input_ids": [enc.ids for enc in encoded],
                    "token_type_ids": [enc.type_ids for enc in encoded],
                    "labels": label,
                    "index": index,
                    "truncated": any(enc.overflowing for enc in encoded),
                }
            )
        return examples

    def _label(self, value: Any, num_endings: int, where: str) -> int:
        """The gold index; anything but an integer in [0, K) (or its digits) names the place and K."""
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not text.isdigit() or int(text) >= num_endings:
            raise ValueError(
                f"{where}: label {value!r} is not the index of one of the {num_endings} endings "
                f"(0 .. {num_endings - 1})"
            )
        return int(text)

    def format_prediction(self, index: int, prediction: tuple[int, list[float]]) -> str:
        """The line ``zoo predict`` writes for question ``index`` of ``predict_file``.

        Args:
            index: The question's position in ``predict_file`` (0-based, blank lines not counted).
            prediction: What `zoo.tasks.MultipleChoice.predict_step` returns for it: the chosen index and
                the probability of every ending.

        Returns:
            The chosen index, then each ending's probability (4 decimals), tab-separated, and a newline.
        """
        chosen, probabilities = prediction
        return "\t".join([str(chosen), *(f"{p:.4f}" for p in probabilities)]) + "\n"

    # -- loaders: a question's length is its longest pair; batches are (B, K, T) ---------------------
    def train_dataloader(self) -> DataLoader:
        dataset = self._require("fit")
        if self.batching == "bucketed":
            lengths = [max(len(ids) for ids in item["input_ids"]) for item in dataset.items]
            sampler: ResumableSampler = LengthBucketSampler(
                dataset, lengths=lengths, batch_size=self.batch_size, seed=self.seed
            )
        else:
            sampler = ResumableSampler(dataset, batch_size=self.batch_size, seed=self.seed)
        return self._loader(dataset, self.batch_size, self._resumable(sampler))

    def _loader(
        self, dataset: Examples, batch_size: int, sampler: Any = None, collate: Any = pad_batch
    ) -> DataLoader:
        return super()._loader(dataset, batch_size, sampler, collate=pad_choices)
