"""Next-token datasets over a token array: training blocks and the sliding windows that score a stream.

Items are ``{"input_ids": (T,), "labels": (T,)}`` (int64), with ``document_ids`` (T,) when the documents
of a packed stream are kept apart (`document_item`). `zoo.data.text.TextDataModule` cuts them from its
token storage (`zoo.data.storage`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.batch import IGNORE_INDEX
from zoo.errors import check_positive


class TokenBlocks(Dataset):
    """Fixed-length blocks of a token array with next-token targets.

    Item ``i`` starts at ``s = i * stride`` and is
    ``{"input_ids": tokens[s : s+T], "labels": tokens[s+1 : s+T+1]}``.
    ``stride == T`` gives consecutive, non-overlapping blocks; a smaller stride gives overlapping windows
    (``stride=1`` makes every position a possible start, like sampling random offsets).

    Args:
        tokens: 1-D token array (usually a ``np.memmap``).
        block_size: T, the number of positions per example.
        stride: Distance between block starts (defaults to ``block_size``).
        ignore_id: A label equal to this id (the tokenizer's ``<unk>``) becomes -100: never a target.
        eot_id: The token that ends each document (``<|endoftext|>``), for packed documents: items also
            hold ``document_ids`` and the target after it is -100 (see `document_item`); ``None``: off.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        stride: int | None = None,
        ignore_id: int | None = None,
        eot_id: int | None = None,
    ) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block_size} + 1 positions")
        check_positive("TokenBlocks", block_size=block_size, stride=stride)
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride or block_size
        self.ignore_id = ignore_id
        self.eot_id = eot_id

    def __len__(self) -> int:
        return (len(self.tokens) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = i * self.stride
        chunk = self.tokens[start : start + self.block_size + 1]
        return _next_token_item(chunk, self.ignore_id, eot_id=self.eot_id)


class ShuffledBlocks(TokenBlocks):
    """`TokenBlocks` over a `DocumentStream` whose documents change order each epoch.

    Items are asked for as ``(epoch, i)`` (`zoo.data.resumable.EpochSampler` yields them): block ``i`` of
    that epoch's document order, so the order is the same in every DataLoader worker and after a resume.
    """

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        self.tokens.set_epoch(epoch)
        return super().__getitem__(i)


class SlidingWindows(Dataset):
    """Windows that score every token of a stream exactly once: strided sliding-window evaluation.

    With ``N`` tokens, targets are tokens ``1 .. N-1`` (token 0 has nothing before it). Window ``k`` starts
    at ``s = min(k * stride, N - 1 - T)`` (the last window ends at the last token) and holds
    ``input_ids = tokens[s : s+T]`` and ``labels = tokens[s+1 : s+T+1]``, where the labels of targets an
    earlier window already scored are -100: they are context only. So the first window scores its ``T``
    targets with the context from the start of the stream, and every later target is predicted from at
    least ``T - stride + 1`` tokens before it. ``stride == T`` gives disjoint windows (cheapest, least
    context); ``stride == 1`` gives every target the full ``T`` (``T`` times the cost). A stream shorter
    than a window is one window of ``N - 1`` positions.

    Args:
        tokens: 1-D token array, at least 2 tokens.
        block_size: T, the positions per window (the model's context).
        stride: New targets per window after the first (at most ``block_size``; defaults to it).
        ignore_id: A label equal to this id (the tokenizer's ``<unk>``) becomes -100: never scored.
        eot_id: The token that ends each document, for packed documents (as in `TokenBlocks`).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        stride: int | None = None,
        ignore_id: int | None = None,
        eot_id: int | None = None,
    ) -> None:
        check_positive("SlidingWindows", block_size=block_size, stride=stride)
        stride = stride or block_size
        if stride > block_size:
            raise ValueError(
                f"stride={stride} is larger than the window of {block_size} tokens: the tokens between "
                "windows would never be scored"
            )
        if len(tokens) < 2:
            raise ValueError(f"{len(tokens)} token(s) to score: at least 2 are needed (the first is context)")
        self.tokens = tokens
        self.width = min(block_size, len(tokens) - 1)
        self.stride = stride
        self.ignore_id = ignore_id
        self.eot_id = eot_id
        self._last_start = len(tokens) - 1 - self.width

    def __len__(self) -> int:
        return 1 + -(-self._last_start // self.stride)  # 1 + ceil(last_start / stride)

    def start(self, i: int) -> int:
        """Index of window ``i``'s first input token."""
        return min(i * self.stride, self._last_start)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = self.start(i)
        scored_before = 0 if i == 0 else self.start(i - 1) + self.width - s  # targets the last window scored
        chunk = self.tokens[s : s + self.width + 1]
        return _next_token_item(chunk, self.ignore_id, context=scored_before, eot_id=self.eot_id)


def _next_token_item(
    chunk: np.ndarray, ignore_id: int | None, context: int = 0, eot_id: int | None = None
) -> dict[str, torch.Tensor]:
    """``{"input_ids": chunk[:-1], "labels": chunk[1:]}`` (int64), with -100 on the first ``context``
    labels and on labels equal to ``ignore_id``; with ``eot_id``, as `document_item` makes it."""
    ids = torch.from_numpy(chunk.astype(np.int64))
    labels = ids[1:].clone()
    labels[:context] = IGNORE_INDEX
    if ignore_id is not None:
        labels[labels == ignore_id] = IGNORE_INDEX
    item = {"input_ids": ids[:-1], "labels": labels}
    return item if eot_id is None else document_item(item, eot_id)


def document_item(item: dict[str, torch.Tensor], eot_id: int) -> dict[str, torch.Tensor]:
    """Mark the documents of a next-token item whose documents each end with ``eot_id``.

    Adds ``document_ids`` (T,): the number of ``eot_id`` tokens before each position, so the end token
    belongs to the document it ends and the first document of the item is 0. The label at an end token
    (the next document's first token) becomes -100: predicting it would take the other document's context.
    """
    ends = item["input_ids"] == eot_id  # (T,)
    labels = item["labels"].masked_fill(ends, IGNORE_INDEX)
    document_ids = ends.long().cumsum(0) - ends.long()  # (T,) ends before each position
    return {**item, "labels": labels, "document_ids": document_ids}
