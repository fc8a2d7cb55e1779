"""Multiple choice (SWAG-style): score each of K (context, candidate) pairs, softmax over the K."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from zoo.nn import pool_first, pool_last, pool_mean
from zoo.tasks.classification import Pooling
from zoo.tasks.finetune import FinetuneTask

_POOL = {"first": pool_first, "last": pool_last, "mean": pool_mean}
_PAIR_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class MultipleChoice(FinetuneTask):
    """Pick the right one of K candidates: the backbone encodes each (context, candidate) pair, a pooled
    vector goes through dropout and ``Linear(embed_dim, 1)`` to one score per pair, and the K scores of a
    question are its logits; training minimises cross-entropy against the gold index. K may differ from
    batch to batch: nothing in the model depends on it.

    Batches hold ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` (B, K, T), and
    ``labels`` (B,): the gold index of each question. See `zoo.data.MultipleChoiceDataModule`.

    Logged: ``{train,val,test}_loss`` and ``{val,test}_acc`` (share of questions answered right); with
    ``adversarial.attack_eval`` the same under attack as ``val_adv_*`` and ``test_adv_*``.

    Args:
        backbone: The network or its spec (``zoo.models.bert.Bert``, ...).
        pooling: ``pooler``: the backbone's own pooler (BERT's tanh layer on [CLS], which BERT's
            multiple-choice fine-tuning uses); ``first``: the [CLS] hidden state; ``last``: the last real
            token; ``mean``: the mean over real tokens (as all-MiniLM-L6-v2 was trained).
        classifier_dropout: Dropout before the scoring layer.
        **kwargs: `FinetuneTask`'s arguments: ``pretrained``, ``layer_lr_decay``, ``freeze_embeddings``,
            ``optimizer``, ``lr_scheduler``, ``compile``, ``activation_checkpointing``, ``lora``,
            ``adversarial``, with its defaults.

    Raises:
        ValueError: ``classifier_dropout`` outside [0, 1]; ``pooling: pooler`` on a backbone without one
            (the message names the argument).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pooling: Pooling = "pooler",
        classifier_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if pooling == "pooler" and not hasattr(self.backbone, "pool"):
            raise ValueError(
                f"{type(self.backbone).__name__} has no pooler; use pooling 'first', 'last' or 'mean'"
            )
        self.pooling = pooling
        self.head = self.label_head(1, None, dropout=classifier_dropout)
        stages = ["val", "test"] + (["val_adv", "test_adv"] if self.attack_eval else [])
        for stage in stages:
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_acc", MeanMetric())

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, K) of a batch of questions, one per candidate."""
        b, k, t = batch["input_ids"].shape
        pairs = {key: batch[key].reshape(b * k, t) for key in _PAIR_KEYS if batch.get(key) is not None}
        how = "first" if self.pooling == "pooler" else self.pooling  # the pooler reads [CLS]
        if how == "first" and getattr(self.backbone, "accepts_output_positions", False):
            zeros = pairs["input_ids"].new_zeros(b * k, 1)  # (B*K, 1): the last layer computes only [CLS]
            pooled = self.features(pairs, output_positions=zeros)[:, 0]  # (B*K, C)
        else:
            pooled = _POOL[how](self.features(pairs), pairs.get("attention_mask"))  # (B*K, C)
        if self.pooling == "pooler":
            pooled = self.backbone.pool(pooled.unsqueeze(1))  # the pooler reads position 0 of (B*K, 1, C)
        return self.head(pooled).view(b, k)  # (B*K, 1) -> (B, K)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the softmax over the K candidates against the gold index."""
        return F.cross_entropy(logits.float(), labels)

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """`loss` of the batch's logits and ``labels`` (`FinetuneTask.training_step` minimises it)."""
        return self.loss(self(batch), batch["labels"])

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[tuple[int, list[float]]]:
        """Per question, what the data module's ``format_prediction`` writes: the chosen index and the
        softmax probability of every candidate, in candidate order."""
        probs = torch.softmax(self(batch).float(), dim=-1)  # (B, K)
        return [(int(row.argmax()), row.tolist()) for row in probs]

    def evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        """Update and log ``{stage}_loss`` and ``{stage}_acc`` (stages: see `FinetuneTask.evaluate`)."""
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        accuracy: MeanMetric = getattr(self, f"{stage}_acc")
        logits = self(batch).float()
        labels = batch["labels"]
        n = len(labels)
        loss.update(self.loss(logits, labels), weight=n)
        accuracy.update((logits.argmax(-1) == labels).float())
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{stage}_acc", accuracy, batch_size=n)
