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

from zoo.nn import pool_first, pool_last, pool_mean
from zoo.tasks.finetune import FinetuneTask

ProblemType = Literal["single_label", "multi_label", "regression"]
Pooling = Literal["pooler", "first", "last", "mean"]
_POOL = {"first": pool_first, "last": pool_last, "mean": pool_mean}


def _metrics(problem_type: ProblemType, num_labels: int) -> MetricCollection:
    if problem_type == "regression":
        return MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef()})
    if problem_type == "multi_label":
        return MetricCollection(
            {
                "acc": MultilabelAccuracy(num_labels=num_labels),
                "f1": MultilabelF1Score(num_labels=num_labels, average="macro"),
                "mcc": MultilabelMatthewsCorrCoef(num_labels=num_labels),
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
    ``val_mse``, ``val_pearson`` for regression (likewise ``test_*``).

    Args:
        backbone: The network or its spec (``zoo.models.bert.Bert``, ``zoo.models.gpt2.GPT2``, ...).
        num_labels: Number of classes (1 for regression); linked from the data by the CLI.
        label_names: Class names by id (linked from the data); ``zoo predict`` writes them.
        problem_type: ``single_label`` (softmax cross-entropy), ``multi_label`` (a sigmoid per class,
            threshold 0.5) or ``regression`` (mean squared error).
        pooling: ``pooler``: the backbone's own pooler (BERT's tanh layer on [CLS]); ``first``: the [CLS]
            hidden state; ``last``: the last real token (GPT-2; any padding side); ``mean``: the mean over
            real tokens (sentence-transformers models such as all-MiniLM-L6-v2 were trained with it).
        classifier_dropout: Dropout before the output layer.
        pretrained, layer_lr_decay, freeze_embeddings, learning_rate, weight_decay, betas, warmup_steps,
            min_lr_ratio, total_steps: See `FinetuneTask`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_labels: int = 2,
        label_names: list[str] | None = None,
        problem_type: ProblemType = "single_label",
        pooling: Pooling = "pooler",
        classifier_dropout: float = 0.1,
        pretrained: str | None = None,
        layer_lr_decay: float = 1.0,
        freeze_embeddings: bool = False,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        super().__init__(
            backbone,
            pretrained=pretrained,
            layer_lr_decay=layer_lr_decay,
            freeze_embeddings=freeze_embeddings,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            betas=betas,
            warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio,
            total_steps=total_steps,
        )
        if problem_type == "regression" and num_labels != 1:
            raise ValueError(f"regression predicts one number: num_labels must be 1, got {num_labels}")
        if pooling == "pooler" and not hasattr(self.backbone, "pool"):
            raise ValueError(
                f"{type(self.backbone).__name__} has no pooler; use pooling 'first', 'last' or 'mean'"
            )
        self.num_labels = num_labels
        self.label_names = label_names
        self.problem_type = problem_type
        self.pooling = pooling
        self.head = self.label_head(num_labels, label_names, dropout=classifier_dropout)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = _metrics(problem_type, num_labels).clone(prefix="val_")
        self.test_metrics = _metrics(problem_type, num_labels).clone(prefix="test_")

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, num_labels) of a batch (a dict as the data module yields)."""
        hidden = self.features(batch)  # (B, T, C)
        if self.pooling == "pooler":
            pooled = self.backbone.pool(hidden)
        else:
            pooled = _POOL[self.pooling](hidden, batch.get("attention_mask"))  # (B, C)
        return self.head(pooled)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy, per-class binary cross-entropy or mean squared error, by ``problem_type``."""
        logits = logits.float()
        if self.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.problem_type == "multi_label":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[Any]:
        """Per example: a label name (``single_label``), a list of names (``multi_label``) or a float."""
        logits = self(batch).float()
        if self.problem_type == "regression":
            return logits.squeeze(-1).tolist()
        names = self.label_names or [str(i) for i in range(self.num_labels)]
        if self.problem_type == "multi_label":
            return [[names[j] for j in row.nonzero().flatten().tolist()] for row in logits > 0]
        return [names[i] for i in logits.argmax(-1).tolist()]

    def _evaluate(
        self, batch: dict[str, Tensor], loss: MeanMetric, metrics: MetricCollection, stage: str
    ) -> None:
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
