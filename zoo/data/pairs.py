"""Sentence pairs as a dataset, and the collator that turns them into encoder-decoder batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.batch import IGNORE_INDEX


class ParallelExamples(Dataset):
    """Token ids of sentence pairs (without special tokens), stored flat with offsets.

    ``dataset[i]`` is ``{"index", "source", "target"}`` (ids as int64 tensors), plus ``"reference"``
    (the raw target line) when ``references`` are given; ``dataset[[i, j, ...]]`` is a list of those
    (what `TokenBudgetSampler` asks for).
    """

    def __init__(
        self,
        source: tuple[np.ndarray, np.ndarray],
        target: tuple[np.ndarray, np.ndarray] | None = None,
        references: list[str] | None = None,
    ) -> None:
        self.source, self.target, self.references = source, target, references

    def __len__(self) -> int:
        return len(self.source[1]) - 1

    def lengths(self) -> np.ndarray:
        """(N,) positions each pair needs: ``max(len(source), len(target)) + 1`` (an end or start token)."""
        n = np.diff(self.source[1])
        return 1 + (np.maximum(n, np.diff(self.target[1])) if self.target is not None else n)

    def __getitem__(self, index: int | list[int]) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, list):
            return [self[i] for i in index]
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range for {len(self)} pairs")
        example: dict[str, Any] = {"index": index, "source": _row(self.source, index)}
        if self.target is not None:
            example["target"] = _row(self.target, index)
        if self.references is not None:
            example["reference"] = self.references[index]
        return example


def _row(flat: tuple[np.ndarray, np.ndarray], i: int) -> torch.Tensor:
    ids, offsets = flat
    return torch.from_numpy(ids[offsets[i] : offsets[i + 1]].astype(np.int64))


class TranslationCollator:
    """Pad examples into a batch: ``input_ids`` (B, S) are the source plus ``</s>``, ``attention_mask``
    (B, S), ``decoder_input_ids`` (B, T) are ``<s>`` plus the target and ``labels`` (B, T) the target plus
    ``</s>`` (``-100`` at padding); ``index`` (B,) and, for evaluation sets, ``references`` (raw text).

    Args:
        pad_token_id: Padding id.
        bos_token_id: Start-of-target id.
        eos_token_id: End-of-sentence id.
        source_start_id: An id put before every source as well (BERT2BERT: ``[CLS]``, so the encoder reads
            ``[CLS] source [SEP]`` as BERT was trained to); ``None``: none.
    """

    def __init__(
        self, *, pad_token_id: int, bos_token_id: int, eos_token_id: int, source_start_id: int | None = None
    ) -> None:
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.source_start_id = source_start_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        eos, bos = torch.tensor([self.eos_token_id]), torch.tensor([self.bos_token_id])
        start = torch.tensor([] if self.source_start_id is None else [self.source_start_id], dtype=torch.long)
        source = [torch.cat([start, e["source"], eos]) for e in examples]
        batch: dict[str, Any] = {
            "input_ids": _pad(source, self.pad_token_id),
            "attention_mask": _pad([torch.ones_like(s) for s in source], 0),
            "index": torch.tensor([e["index"] for e in examples]),
        }
        if "target" in examples[0]:
            batch["decoder_input_ids"] = _pad(
                [torch.cat([bos, e["target"]]) for e in examples], self.pad_token_id
            )
            batch["labels"] = _pad([torch.cat([e["target"], eos]) for e in examples], IGNORE_INDEX)
        if "reference" in examples[0]:
            batch["references"] = [e["reference"] for e in examples]
        return batch


def _pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)
