"""Collating encoded examples into batches: padded rows (one example per row) or packed rows (several
examples per row, kept apart by ``document_ids``).

An encoded example is a dict with ``input_ids`` (a list), optionally ``token_type_ids`` and per-token
lists named by ``sequence_keys`` (tagging ``labels``, ``word_index``), and per-example values (a
classifier's ``labels``, ``index``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PER_EXAMPLE_KEYS = ("labels", "index")
"""Per-example values stacked into (N, ...) tensors, unless listed as per-token ``sequence_keys``."""


def pad_batch(
    items: list[dict[str, Any]], *, pad_token_id: int, sequence_keys: dict[str, int] | None = None
) -> dict[str, Tensor]:
    """Collate encoded examples: right-pad ``input_ids`` (with ``pad_token_id``) and ``token_type_ids`` (0) to
    the longest one, add ``attention_mask``; pad each key of ``sequence_keys`` (per-token lists, e.g.
    tagging ``labels``) with its fill value; stack the other keys (``labels`` of a classifier, ``index``)."""
    sequence_keys = sequence_keys or {}
    width = max(len(item["input_ids"]) for item in items)
    batch = _empty_rows(len(items), width, pad_token_id, sequence_keys)
    for row, item in enumerate(items):
        _place(batch, item, row, 0, sequence_keys)
    return batch | _per_example(items, sequence_keys)


def pack_batch(
    items: list[dict[str, Any]],
    *,
    pad_token_id: int,
    sequence_keys: dict[str, int] | None = None,
    width: int | None = None,
) -> dict[str, Tensor]:
    """Collate encoded examples into as few rows as fit them, several per row, without padding between.

    Rows are ``width`` positions wide (default: as wide as the longest example); examples go into the
    first row with room, longest first (first-fit decreasing). Keys as `pad_batch` makes them, plus
    ``document_ids`` (R, W), the example (0..N-1, its place in ``items``) at each position and -1 at
    padding, and ``sequence_spans`` (N, 3), each example's row, first position and length. A
    `zoo.models.protocols.PackedHiddenStates` keeps the examples of a row apart, so each gets the hidden
    states it gets alone; per-example keys stay in ``items`` order.
    """
    sequence_keys = sequence_keys or {}
    lengths = [len(item["input_ids"]) for item in items]
    width = width or max(lengths)
    rows = first_fit_rows(lengths, width)
    batch = _empty_rows(len(rows), width, pad_token_id, sequence_keys)
    batch["document_ids"] = torch.full((len(rows), width), -1, dtype=torch.long)
    spans = torch.empty(len(items), 3, dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for n in members:
            _place(batch, items[n], row, start, sequence_keys)
            batch["document_ids"][row, start : start + lengths[n]] = n
            spans[n] = torch.tensor([row, start, lengths[n]])
            start += lengths[n]
    return batch | _per_example(items, sequence_keys) | {"sequence_spans": spans}


def first_fit_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``width`` positions: first-fit decreasing (each
    example, longest first, goes into the first row with room; ties in ``lengths`` order)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > width:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than a row of {width}")
        row = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def _empty_rows(
    num_rows: int, width: int, pad_token_id: int, sequence_keys: dict[str, int]
) -> dict[str, Tensor]:
    shape = (num_rows, width)
    return {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
        "token_type_ids": torch.zeros(shape, dtype=torch.long),
        **{key: torch.full(shape, fill, dtype=torch.long) for key, fill in sequence_keys.items()},
    }


def _place(batch: dict[str, Tensor], item: dict[str, Any], row: int, start: int, sequence_keys: dict) -> None:
    """Write one example's per-token lists into ``row`` from position ``start``."""
    length = len(item["input_ids"])
    where = (row, slice(start, start + length))
    batch["input_ids"][where] = torch.tensor(item["input_ids"])
    batch["attention_mask"][where] = 1
    batch["token_type_ids"][where] = torch.tensor(item.get("token_type_ids") or [0] * length)
    for key in sequence_keys:
        batch[key][where] = torch.tensor(item[key])


def _per_example(items: list[dict[str, Any]], sequence_keys: dict[str, int]) -> dict[str, Tensor]:
    return {
        key: torch.tensor([item[key] for item in items])
        for key in PER_EXAMPLE_KEYS
        if key not in sequence_keys and items[0].get(key) is not None
    }
