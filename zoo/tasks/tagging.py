"""Token classification (NER, POS tagging): one label per word, predicted at its first subword."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from zoo.data.batch import IGNORE_INDEX
from zoo.tasks.finetune import OPTIMIZER as OPTIMIZER  # every fine-tuning task's default optimizer
from zoo.tasks.finetune import FinetuneTask
from zoo.tasks.metrics import SpanF1

_IOB2 = re.compile(r"^(O|[BI]-.+)$")


class TokenClassification(FinetuneTask):
    """Tag every word: the backbone's hidden state at each word's first subword, dropout, a linear layer.

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` (B, T), with a label id at each word's
    first subword and ``-100`` elsewhere, and ``word_index`` (B, T) for prediction (see
    `zoo.data.TaggingDataModule`).

    Logged: ``{train,val,test}_loss``, ``val_acc`` (word accuracy) and, when the labels are IOB2 tags,
    entity-level ``val_f1``, ``val_precision``, ``val_recall`` and ``val_f1_<TYPE>`` per entity type
    (`zoo.tasks.metrics.SpanF1`, equal to ``seqeval``'s); likewise ``test_*``, and with
    ``adversarial.attack_eval`` the same under attack as ``val_adv_*`` and ``test_adv_*``.

    Args:
        backbone: The network or its spec (``zoo.models.bert.Bert``, ``zoo.models.gpt2.GPT2``, ...).
        num_labels: Number of tags; linked from the data by the CLI.
        label_names: Tag strings by id (linked from the data); needed for entity scores and predictions.
        entity_metric: ``auto``: strict IOB2 span scores when every label is ``O``, ``B-X`` or ``I-X``;
            ``strict`` / ``conlleval``: that ``SpanF1`` mode (conlleval: an ``I-`` tag after ``O`` starts
            an entity); ``none``: accuracy only.
        classifier_dropout: Dropout before the output layer.
        **kwargs: Other arguments: `FinetuneTask` (forwarded): ``pretrained``, ``layer_lr_decay``,
            ``freeze_embeddings``, ``optimizer``, ``lr_scheduler``, ``adversarial``, and `BackboneTask`'s
            ``compile``, ``activation_checkpointing``, ``lora``.

    Raises:
        ValueError: ``num_labels`` not a positive integer or ``classifier_dropout`` outside [0, 1] (the
            message names the argument).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_labels: int = 2,
        label_names: list[str] | None = None,
        entity_metric: Literal["auto", "strict", "conlleval", "none"] = "auto",
        classifier_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.num_labels = num_labels
        self.label_names = label_names
        self.head = self.label_head(num_labels, label_names, dropout=classifier_dropout)
        mode = _entity_mode(entity_metric, label_names)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
        self.test_acc = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
        self.val_entities = SpanF1(label_names, mode=mode) if mode else None
        self.test_entities = SpanF1(label_names, mode=mode) if mode else None
        if self.attack_eval:  # the same metrics under the evaluation attack
            self.val_adv_loss, self.test_adv_loss = MeanMetric(), MeanMetric()
            self.val_adv_acc = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
            self.test_adv_acc = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
            self.val_adv_entities = SpanF1(label_names, mode=mode) if mode else None
            self.test_adv_entities = SpanF1(label_names, mode=mode) if mode else None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, T, num_labels) at every subword position."""
        return self.head(self.features(batch))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the labelled (first-subword) positions."""
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """`loss` of the batch's logits and ``labels`` (`FinetuneTask.training_step` minimises it)."""
        return self.loss(self(batch), batch["labels"])

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[list[str]]:
        """Per sentence, the predicted tag of each word that has a subword, in word order."""
        predicted = self(batch).argmax(-1).tolist()  # (B, T)
        names = self.label_names or [str(i) for i in range(self.num_labels)]
        out = []
        for row, words in zip(predicted, batch["word_index"].tolist()):
            tagged = sorted((w, names[p]) for p, w in zip(row, words) if w >= 0)
            out.append([tag for _, tag in tagged])
        return out

    def evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        """Update and log ``{stage}_loss`` and ``{stage}_acc``, and count entities for ``{stage}_f1``
        (stages: see `FinetuneTask.evaluate`)."""
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        acc: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        entities: SpanF1 | None = getattr(self, f"{stage}_entities")
        logits = self(batch)
        labels = batch["labels"]
        words = int((labels != IGNORE_INDEX).sum())
        loss.update(self.loss(logits, labels), weight=words)
        preds = logits.argmax(-1)
        acc.update(preds, labels)
        n = len(labels)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{stage}_acc", acc, batch_size=n)
        if entities is not None:
            entities.update(preds, labels)

    def on_validation_epoch_end(self) -> None:
        self._log_entities("val", self.val_entities)
        self._log_entities("val_adv", getattr(self, "val_adv_entities", None))

    def on_test_epoch_end(self) -> None:
        self._log_entities("test", self.test_entities)
        self._log_entities("test_adv", getattr(self, "test_adv_entities", None))

    def _log_entities(self, stage: str, entities: SpanF1 | None) -> None:
        if entities is None or not entities.update_called:
            return
        scores = entities.compute()
        self.log_dict({f"{stage}_{name}": value.float() for name, value in scores.items()})
        entities.reset()


def _entity_mode(choice: str, label_names: list[str] | None) -> str | None:
    if choice == "none" or label_names is None:
        return None
    if choice != "auto":
        return choice
    return "strict" if all(_IOB2.match(name) for name in label_names) and len(label_names) > 1 else None
