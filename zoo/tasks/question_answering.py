"""Extractive question answering: a start and an end logit per token, the best span over every window of
a question, scored with the official SQuAD v1.1 exact match and F1."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from zoo.errors import check_positive
from zoo.tasks.finetune import OPTIMIZER as OPTIMIZER  # every fine-tuning task's default optimizer
from zoo.tasks.finetune import FinetuneTask

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


# -- the official SQuAD v1.1 scores (evaluate-v1.1.py) -------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower-case, drop ASCII punctuation, drop the articles a/an/the, and
    collapse whitespace (in that order, as ``evaluate-v1.1.py`` does)."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised texts' word multisets (0.0 when they share no word, an empty side included)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """``(exact match, F1)`` of one prediction: each the maximum over the gold answers (0-1 scale)."""
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


class SquadScores(Metric):
    """Mean exact match and F1 (percent, like ``evaluate-v1.1.py``) over questions; sums synced across
    ranks. ``compute()`` gives ``{"em": ..., "f1": ...}``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("em", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f1", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> None:
        """Score each prediction against its gold answers (questions without gold answers are skipped)."""
        for prediction, answers in zip(predictions, golds):
            if answers:
                em, f1 = squad_scores(prediction, answers)
                self.em += em
                self.f1 += f1
                self.total += 1

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp(min=1)
        return {"em": (100 * self.em / total).float(), "f1": (100 * self.f1 / total).float()}


# -- span decoding ---------------------------------------------------------------------------------------
class Span(NamedTuple):
    """A candidate answer: its text, its first character in the context, ``score`` (start + end logit)
    and ``probability`` (softmax over the question's n-best scores)."""

    text: str
    start: int
    score: float
    probability: float


def best_spans(
    start_logits: Tensor,
    end_logits: Tensor,
    offset_start: Tensor,
    offset_end: Tensor,
    window_question: Tensor,
    *,
    num_questions: int,
    n_best: int,
    max_answer_length: int,
) -> list[list[tuple[float, int, int, int]]]:
    """The ``n_best`` highest-scoring spans of each question over all its windows.

    A span is a start token ``s`` and an end token ``e`` of one window, both context tokens (offsets
    >= 0), with ``s <= e < s + max_answer_length``; its score is ``start_logits[s] + end_logits[e]``. The
    search is exact (every valid pair, not only pairs of the best single starts and ends). Overlapping
    windows see the same text twice: a character span is kept once, with its best score.

    Args:
        start_logits: (N, T) per window.
        end_logits: (N, T).
        offset_start: (N, T) first character of each context token, -1 at other tokens.
        offset_end: (N, T) its end (exclusive).
        window_question: (N,) the question (0..Q-1) of each window.
        num_questions: Q.
        n_best: Spans kept per question.
        max_answer_length: Longest span in tokens.

    Returns:
        Per question, ``(score, window, start, end)`` best first (fewer than ``n_best`` when its windows
        have fewer valid spans).
    """
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]  # (N, T, T): [s, e]
    positions = torch.arange(scores.shape[-1], device=scores.device)
    length = positions[None, :] - positions[:, None]  # (T, T): e - s
    context = offset_start >= 0  # (N, T)
    valid = (length >= 0) & (length < max_answer_length) & context[:, :, None] & context[:, None, :]
    scores = scores.masked_fill(~valid, float("-inf")).flatten(1)  # (N, T * T)
    top, flat = scores.topk(min(n_best, scores.shape[1]), dim=1)  # (N, k): enough, as spans are distinct
    width = valid.shape[-1]
    found: list[list[tuple[float, int, int, int]]] = [[] for _ in range(num_questions)]
    for window, (row_scores, row_flat, question) in enumerate(
        zip(top.tolist(), flat.tolist(), window_question.tolist())
    ):
        found[question] += [
            (x, window, i // width, i % width) for x, i in zip(row_scores, row_flat) if x > -math.inf
        ]
    starts, ends = offset_start.tolist(), offset_end.tolist()
    best = []
    for spans in found:
        seen: set[tuple[int, int]] = set()
        kept = []
        for span in sorted(spans, key=lambda span: -span[0]):
            chars = (starts[span[1]][span[2]], ends[span[1]][span[3]])
            if chars not in seen:
                seen.add(chars)
                kept.append(span)
        best.append(kept[:n_best])
    return best


class QuestionAnswering(FinetuneTask):
    """Extractive question answering (SQuAD): a linear layer gives every token a start and an end logit;
    the answer is the best-scoring span of context tokens over all windows of the question, mapped back
    to the context's own characters.

    Batches come from `zoo.data.QuestionAnsweringDataModule`: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (N, T) per window; ``labels`` (N, 2), the answer's first and last token (0, the
    [CLS] token, in a window without the answer); for evaluation and prediction also the character span
    of each context token (``offset_start``, ``offset_end``, -1 elsewhere), ``window_question`` (N,),
    ``contexts`` and gold ``answers`` per question.

    Logged: ``{train,val,test}_loss`` (the mean of the start and end cross-entropies, per window), and
    ``val_em``, ``val_f1`` (likewise ``test_*``): SQuAD v1.1 exact match and F1 in percent, the maximum
    over each question's gold answers, after the official normalisation (`normalize_answer`).

    Args:
        backbone: The network or its spec (``zoo.models.bert.Bert``: segment ids tell question from
            context).
        n_best: Candidate spans kept per question (``zoo predict`` writes them all, best first).
        max_answer_length: Longest answer in tokens.
        classifier_dropout: Dropout before the span layer (BERT's SQuAD head has none).
        **kwargs: Other arguments: `FinetuneTask` (forwarded): ``pretrained``, ``layer_lr_decay``,
            ``freeze_embeddings``, ``optimizer``, ``lr_scheduler``, ``adversarial`` (with ``attack_eval``
            it also logs ``val_adv_em``, ``val_adv_f1`` and ``val_adv_loss``, likewise ``test_adv_*``: the
            windows' token embeddings under attack), and `BackboneTask`'s ``compile``,
            ``activation_checkpointing``, ``lora``.

    Raises:
        ValueError: ``n_best`` or ``max_answer_length`` not a positive integer, ``classifier_dropout``
            outside [0, 1] (the message names the argument).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_best: int = 20,
        max_answer_length: int = 30,
        classifier_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        check_positive(type(self).__name__, n_best=n_best, max_answer_length=max_answer_length)
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.head = self.label_head(2, None, dropout=classifier_dropout)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_scores, self.test_scores = SquadScores(), SquadScores()
        if self.attack_eval:  # the same scores under the evaluation attack
            self.val_adv_loss, self.test_adv_loss = MeanMetric(), MeanMetric()
            self.val_adv_scores, self.test_adv_scores = SquadScores(), SquadScores()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Start and end logits (N, T, 2) of every window; padding positions get the lowest value."""
        logits = self.head(self.features(batch)).float()  # (N, T, 2)
        mask = batch.get("attention_mask")
        if mask is not None:  # padding is never an answer: the loss does not depend on the batch's width
            logits = logits.masked_fill(~mask.bool()[:, :, None], torch.finfo(logits.dtype).min)
        return logits

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean of the start and the end cross-entropy over windows; ``labels`` (N, 2)."""
        return (
            F.cross_entropy(logits[..., 0], labels[:, 0]) + F.cross_entropy(logits[..., 1], labels[:, 1])
        ) / 2

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """`loss` of the batch's logits and ``labels`` (`FinetuneTask.training_step` minimises it)."""
        return self.loss(self(batch), batch["labels"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[list[Span]]:
        """Per question of the batch, its n-best `Span` list, best first (what the data module's
        ``format_prediction`` writes)."""
        return self.decode(batch, self(batch))

    def decode(self, batch: dict[str, Any], logits: Tensor) -> list[list[Span]]:
        """The n-best spans of each question of ``batch``, as text of its context (`best_spans`)."""
        starts, ends = batch["offset_start"], batch["offset_end"]
        found = best_spans(
            logits[..., 0],
            logits[..., 1],
            starts,
            ends,
            batch["window_question"],
            num_questions=len(batch["contexts"]),
            n_best=self.n_best,
            max_answer_length=self.max_answer_length,
        )
        starts, ends = starts.tolist(), ends.tolist()
        out = []
        for context, spans in zip(batch["contexts"], found):
            if not spans:
                out.append([])
                continue
            probabilities = torch.tensor([score for score, *_ in spans]).softmax(0).tolist()
            out.append(
                [
                    Span(context[starts[w][s] : ends[w][e]], starts[w][s], score, p)
                    for (score, w, s, e), p in zip(spans, probabilities)
                ]
            )
        return out

    def evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Update ``{stage}_loss`` and the EM/F1 of ``stage`` (see `FinetuneTask.evaluate`) for a batch of
        whole questions; EM and F1 are logged at the end of the epoch."""
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        scores: SquadScores = getattr(self, f"{stage}_scores")
        logits = self(batch)
        windows = len(batch["input_ids"])
        if "labels" in batch:
            loss.update(self.loss(logits, batch["labels"]), weight=windows)
            self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=windows)
        answers = [spans[0].text if spans else "" for spans in self.decode(batch, logits)]
        scores.update(answers, batch["answers"])

    def on_validation_epoch_end(self) -> None:
        for stage in ("val", "val_adv") if self.attack_eval else ("val",):
            self._log_scores(stage, getattr(self, f"{stage}_scores"))

    def on_test_epoch_end(self) -> None:
        for stage in ("test", "test_adv") if self.attack_eval else ("test",):
            self._log_scores(stage, getattr(self, f"{stage}_scores"))

    def _log_scores(self, stage: str, scores: SquadScores) -> None:
        if not scores.update_called:
            return
        values = scores.compute()
        self.log_dict({f"{stage}_{name}": value for name, value in values.items()}, prog_bar=True)
        scores.reset()
