"""Entity-level precision, recall and F1 over IOB2 tags, equal to ``seqeval`` and correct under DDP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from zoo.data.batch import IGNORE_INDEX

MODES = ("strict", "conlleval")


def parse_iob2(tag: str) -> tuple[str, str]:
    """Split an IOB2 tag into ``(prefix, type)``: ``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``.

    Raises:
        ValueError: ``tag`` is not ``O``, ``B-TYPE`` or ``I-TYPE`` (IOBES ``E-``/``S-`` tags included).
    """
    if tag == "O":
        return "O", ""
    prefix, dash, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not entity_type or entity_type != entity_type.strip("-"):
        raise ValueError(f"{tag!r} is not an IOB2 tag (O, B-TYPE or I-TYPE)")
    return prefix, entity_type


def iob2_spans(
    tags: Sequence[str], *, mode: Literal["strict", "conlleval"] = "strict"
) -> set[tuple[str, int, int]]:
    """The entities of one tagged sentence as ``(type, start, end)`` with ``end`` exclusive.

    An entity is a ``B-X`` followed by every ``I-X`` right after it. The modes differ only on an ``I-X``
    that continues no entity (after ``O``, after another type, or at the start): ``"strict"`` ignores it,
    like ``seqeval`` with ``mode="strict", scheme=IOB2``; ``"conlleval"`` starts an entity there, like
    ``seqeval``'s default mode and the CoNLL shared tasks' ``conlleval`` script.

    Args:
        tags: The sentence's tags.
        mode: ``"strict"`` or ``"conlleval"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spans: set[tuple[str, int, int]] = set()
    start, open_type = -1, ""  # start == -1: no entity open
    for i, tag in enumerate(tags):
        prefix, entity_type = parse_iob2(tag)
        if start >= 0 and prefix == "I" and entity_type == open_type:
            continue
        if start >= 0:
            spans.add((open_type, start, i))
            start = -1
        if prefix == "B" or (prefix == "I" and mode == "conlleval"):
            start, open_type = i, entity_type
    if start >= 0:
        spans.add((open_type, start, len(tags)))
    return spans


class SpanF1(Metric):
    """Entity-level (span) precision, recall and F1 over IOB2 tag ids, as ``seqeval`` computes them.

    A predicted entity counts only if its type, start and end all match a gold entity. ``compute()``
    returns the micro averages ``precision``, ``recall``, ``f1`` and, for every entity type ``T`` in
    ``labels``, ``precision_T``, ``recall_T``, ``f1_T``. A ratio with a zero denominator is 0, as in
    ``seqeval``'s default ``zero_division``. The states are per-type counts summed across processes.

    Args:
        labels: Tag string of each label id, e.g. ``["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]``.
        mode: ``"strict"`` equals ``seqeval`` with ``mode="strict", scheme=IOB2``; ``"conlleval"`` equals
            ``seqeval``'s default mode (an ``I-`` tag that continues nothing starts an entity).

    Example:
        >>> metric = SpanF1(["O", "B-PER", "I-PER"])
        >>> metric.update(torch.tensor([[1, 2, 0]]), torch.tensor([[1, 2, -100]]))
        >>> metric.compute()["f1"]
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, labels: Sequence[str], *, mode: Literal["strict", "conlleval"] = "strict") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not labels:
            raise ValueError("labels is empty")
        self.labels = list(labels)
        self.mode = mode
        self.types = sorted({parse_iob2(tag)[1] for tag in self.labels} - {""})
        self._type_index = {t: i for i, t in enumerate(self.types)}
        for name in ("tp", "num_pred", "num_gold"):
            self.add_state(name, default=torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count the entities of a batch.

        Args:
            preds: (B, T) predicted label ids.
            target: (B, T) gold label ids; ``-100`` positions are ignored, and each row's other positions,
                in order, are one sentence.
        """
        if preds.shape != target.shape or preds.dim() != 2:
            raise ValueError(
                f"preds and target must both be (B, T), got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        counts = [[0] * len(self.types) for _ in range(3)]  # true positives, predicted, gold
        for pred_row, gold_row in zip(preds.tolist(), target.tolist()):
            kept = [(p, g) for p, g in zip(pred_row, gold_row) if g != IGNORE_INDEX]
            pred_spans = iob2_spans(self._tags([p for p, _ in kept]), mode=self.mode)
            gold_spans = iob2_spans(self._tags([g for _, g in kept]), mode=self.mode)
            for row, spans in zip(counts, (pred_spans & gold_spans, pred_spans, gold_spans)):
                for entity_type, _, _ in spans:
                    row[self._type_index[entity_type]] += 1
        tp, num_pred, num_gold = torch.tensor(counts, dtype=torch.long, device=self.tp.device)
        self.tp += tp
        self.num_pred += num_pred
        self.num_gold += num_gold

    def compute(self) -> dict[str, Tensor]:
        """Micro ``precision``, ``recall``, ``f1``; per type T ``precision_T``, ``recall_T``, ``f1_T``."""
        out = _scores(self.tp.sum(), self.num_pred.sum(), self.num_gold.sum(), suffix="")
        for i, entity_type in enumerate(self.types):
            out |= _scores(self.tp[i], self.num_pred[i], self.num_gold[i], suffix=f"_{entity_type}")
        return out

    def _tags(self, ids: list[int]) -> list[str]:
        bad = [i for i in ids if not 0 <= i < len(self.labels)]
        if bad:
            raise ValueError(f"label id {bad[0]} out of range for {len(self.labels)} labels")
        return [self.labels[i] for i in ids]


def _scores(tp: Tensor, num_pred: Tensor, num_gold: Tensor, *, suffix: str) -> dict[str, Tensor]:
    """P, R and F1 = 2PR / (P + R) in float64 (seqeval's order of operations); 0 where undefined."""
    tp = tp.double()
    precision = tp / num_pred if num_pred > 0 else torch.zeros_like(tp)
    recall = tp / num_gold if num_gold > 0 else torch.zeros_like(tp)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.zeros_like(tp)
    return {
        f"precision{suffix}": precision.float(),
        f"recall{suffix}": recall.float(),
        f"f1{suffix}": f1.float(),
    }
