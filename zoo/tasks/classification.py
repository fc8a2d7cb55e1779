"""Sequence classification (single-label, multi-label) and regression on top of any zoo backbone."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MultilabelAccuracy,
    MultilabelF1Score,
    MultilabelMatthewsCorrCoef,
)

from zoo.errors import check_probability
from zoo.nn import pool_first, pool_last, pool_mean, pool_packed, sequence_starts
from zoo.tasks.finetune import FinetuneTask

ProblemType = Literal["single_label", "multi_label", "regression"]
Pooling = Literal["pooler", "first", "last", "mean"]
_POOL = {"first": pool_first, "last": pool_last, "mean": pool_mean}


def _metrics(problem_type: ProblemType, num_labels: int, threshold: float) -> MetricCollection:
    if problem_type == "regression":
        return MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef()})
    if problem_type == "multi_label":
        return MetricCollection(
            {
                "acc": MultilabelAccuracy(num_labels=num_labels, threshold=threshold),
                "f1": MultilabelF1Score(num_labels=num_labels, threshold=threshold, average="macro"),
                "mcc": MultilabelMatthewsCorrCoef(num_labels=num_labels, threshold=threshold),
            }
        )
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
            "mcc": MulticlassMatthewsCorrCoef(num_classes=num_labels),
        }
    )


class SequenceClassification(FinetuneTask):
    """Classify (or score) whole sequences: a pooled vector of the backbone's hidden states, dropout,
    and a linear layer.

    Batches hold ``input_ids``, ``attention_mask`` (B, T), optionally ``token_type_ids``, and ``labels``:
    (B,) class ids (``single_label``), (B, num_labels) 0/1 floats (``multi_label``) or (B,) numbers
    (``regression``, ``num_labels=1``). See `zoo.data.TextClassificationDataModule`.

    Logged: ``{train,val,test}_loss``; ``val_acc``, ``val_f1`` (macro), ``val_mcc`` for classification,
    ``val_mse``, ``val_pearson`` for regression (likewise ``test_*``); with ``adversarial.attack_eval`` the
    same under attack as ``val_adv_*`` and ``test_adv_*`` (e.g. ``val_adv_acc``).

    Args:
        backbone: The network or its spec (``zoo.models.bert.Bert``, ``zoo.models.gpt2.GPT2``, ...).
        num_labels: Number of classes (1 for regression); linked from the data by the CLI.
        label_names: Class names by id (linked from the data); ``zoo predict`` writes them.
        problem_type: ``single_label`` (softmax cross-entropy), ``multi_label`` (a sigmoid per class)
            or ``regression`` (mean squared error).
        threshold: ``multi_label`` only: a label is predicted (and counted by the metrics) when its
            probability is above this.
        pooling: ``pooler``: the backbone's own pooler (BERT's tanh layer on [CLS]); ``first``: the [CLS]
            hidden state; ``last``: the last real token (GPT-2; any padding side); ``mean``: the mean over
            real tokens (sentence-transformers models such as all-MiniLM-L6-v2 were trained with it).
        classifier_dropout: Dropout before the output layer.
        **kwargs: Other arguments: `FinetuneTask` (forwarded): ``pretrained``, ``layer_lr_decay``,
            ``freeze_embeddings``, ``optimizer``, ``lr_scheduler``, ``adversarial``, and `BackboneTask`'s
            ``compile``, ``activation_checkpointing``, ``lora``.

    Raises:
        ValueError: ``num_labels`` not a positive integer (not 1 for regression), ``threshold`` or
            ``classifier_dropout`` outside [0, 1], ``pooling: pooler`` on a backbone without one (the
            message names the argument).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_labels: int = 2,
        label_names: list[str] | None = None,
        problem_type: ProblemType = "single_label",
        threshold: float = 0.5,
        pooling: Pooling = "pooler",
        classifier_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        check_probability(type(self).__name__, threshold=threshold)
        if problem_type == "regression" and num_labels != 1:
            raise ValueError(f"regression predicts one number: num_labels must be 1, got {num_labels}")
        if pooling == "pooler" and not hasattr(self.backbone, "pool"):
            raise ValueError(
                f"{type(self.backbone).__name__} has no pooler; use pooling 'first', 'last' or 'mean'"
            )
        self.num_labels = num_labels
        self.label_names = label_names
        self.problem_type = problem_type
        self.threshold = threshold
        self.pooling = pooling
        self.head = self.label_head(num_labels, label_names, dropout=classifier_dropout)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = _metrics(problem_type, num_labels, threshold).clone(prefix="val_")
        self.test_metrics = _metrics(problem_type, num_labels, threshold).clone(prefix="test_")
        if self.attack_eval:  # the same metrics under the evaluation attack
            self.val_adv_loss, self.test_adv_loss = MeanMetric(), MeanMetric()
            self.val_adv_metrics = _metrics(problem_type, num_labels, threshold).clone(prefix="val_adv_")
            self.test_adv_metrics = _metrics(problem_type, num_labels, threshold).clone(prefix="test_adv_")

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, num_labels) of a batch (a dict as the data module yields; packed rows give one row
        of logits per example)."""
        how = "first" if self.pooling == "pooler" else self.pooling  # the pooler reads [CLS]
        if how == "first" and getattr(self.backbone, "accepts_output_positions", False):
            pooled = self._first_tokens(batch)  # (B, C): the last layer computes only these rows
        elif "sequence_spans" in batch:  # packed rows: (R, W, C) -> (N, C), one vector per example
            pooled = pool_packed(self.features(batch), batch["document_ids"], batch["sequence_spans"], how)
        else:
            pooled = _POOL[how](self.features(batch), batch.get("attention_mask"))  # (B, C)
        if self.pooling == "pooler":
            pooled = self.backbone.pool(pooled.unsqueeze(1))  # the pooler reads position 0 of (B, 1, C)
        return self.head(pooled)

    def _first_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """Hidden states (B, C) at each example's first token, the last layer computing only those rows."""
        if "sequence_spans" not in batch:
            zeros = batch["input_ids"].new_zeros(len(batch["input_ids"]), 1)  # (B, 1)
            return self.features(batch, output_positions=zeros)[:, 0]
        spans = batch["sequence_spans"]
        positions, slot = sequence_starts(spans, *batch["input_ids"].shape)  # (R, K), (N,)
        return self.features(batch, output_positions=positions)[spans[:, 0], slot]  # (N, C)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy, per-class binary cross-entropy or mean squared error, by ``problem_type``."""
        logits = logits.float()
        if self.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.problem_type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """`loss` of the batch's logits and ``labels`` (`FinetuneTask.training_step` minimises it)."""
        return self.loss(self(batch), batch["labels"])

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[Any]:
        """Per example, what the data module's ``format_prediction`` writes: ``(label name, probability)``
        pairs, most probable first (``single_label``: every label, softmax probabilities;
        ``multi_label``: the labels whose sigmoid is above ``threshold``), or a float (``regression``).
        Labels without a name are called by their id."""
        logits = self(batch).float()
        if self.problem_type == "regression":
            return logits.squeeze(-1).tolist()
        names = self.label_names or [str(i) for i in range(self.num_labels)]
        multi = self.problem_type == "multi_label"
        probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)  # (B, num_labels)
        ranked, order = probs.sort(dim=-1, descending=True, stable=True)  # ties: label id order
        out = []
        for row_probs, row_ids in zip(ranked.tolist(), order.tolist()):
            pairs = [(names[i], p) for i, p in zip(row_ids, row_probs)]
            if multi:
                pairs = [(name, p) for name, p in pairs if p > self.threshold]
            out.append(pairs)
        return out

    def evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        """Update and log ``{stage}_loss`` and ``{stage}_*`` metrics (stages: see `FinetuneTask.evaluate`)."""
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        logits = self(batch).float()
        labels = batch["labels"]
        n = len(labels)
        loss.update(self.loss(logits, labels), weight=n)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=n)
        if self.problem_type == "regression":
            metrics.update(logits.squeeze(-1), labels.float())
        elif self.problem_type == "multi_label":
            metrics.update(torch.sigmoid(logits), labels.long())
        else:
            metrics.update(logits.argmax(-1), labels)
        self.log_dict(metrics, batch_size=n)
