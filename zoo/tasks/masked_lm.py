"""Masked language modelling, with BERT's next-sentence prediction as an optional second loss."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from zoo.data.batch import IGNORE_INDEX
from zoo.errors import check_positive
from zoo.models.protocols import MaskedLMEncoder
from zoo.tasks.base import BackboneTask
from zoo.tasks.optim import LRSchedulerCallable, OptimizerCallable, adamw, warmup_cosine_schedule

OPTIMIZER = adamw(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)
"""`MaskedLM`'s default ``optimizer``: AdamW at 1e-4, betas (0.9, 0.999), decay 0.01 (BERT's, batch 256)."""
LR_SCHEDULER = warmup_cosine_schedule(warmup_steps=10_000, min_lr_ratio=0.0)
"""`MaskedLM`'s default ``lr_scheduler``: 10k warm-up steps (BERT: 10k of 1M), cosine to 0."""


class PretrainingLosses(NamedTuple):
    """What one forward pass of `MaskedLM` yields.

    Attributes:
        loss: ``mlm_loss + nsp_loss`` (or ``mlm_loss`` alone without NSP).
        mlm_loss: Mean cross-entropy over the masked positions.
        mlm_logits: (N, V) logits at the N masked positions, in row-major order of the batch.
        mlm_targets: (N,) original ids at those positions.
        nsp_loss: Next-sentence cross-entropy, ``None`` without NSP.
        nsp_logits: (B, 2), ``None`` without NSP.
    """

    loss: Tensor
    mlm_loss: Tensor
    mlm_logits: Tensor
    mlm_targets: Tensor
    nsp_loss: Tensor | None
    nsp_logits: Tensor | None


def _padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """``None`` when no position is padding, so attention runs unmasked (a faster kernel, as in
    transformers). Costs one host sync, which the masked-position gather needs anyway."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask


def _metrics() -> nn.ModuleDict:
    # token-weighted means, synchronised across ranks when computed
    return nn.ModuleDict(
        {
            "mlm_loss": MeanMetric(),
            "mlm_acc": MeanMetric(),
            "mlm_ppl": Perplexity(ignore_index=IGNORE_INDEX),
            "nsp_acc": MeanMetric(),
        }
    )


class MaskedLM(BackboneTask):
    """Pretrain a bidirectional encoder: masked-LM loss, plus next-sentence loss with ``nsp`` (BERT); fill
    masks with ``zoo predict``.

    Batches hold ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels`` (all (B, T); labels
    are ``-100`` except at the masked positions) and, with ``nsp``, ``next_sentence_label`` (B,), 0 when
    segment B follows A and 1 when it is random (see `zoo.data.BertPretrainingDataModule`).

    The backbone provides ``hidden_states(input_ids, *, attention_mask, token_type_ids) -> (B, T, C)``,
    ``mlm_logits((N, C)) -> (N, V)`` and, for NSP, ``pool((B, T, C)) -> (B, C)`` and
    ``nsp_logits((B, C)) -> (B, 2)``, as `zoo.models.bert.Bert` does. The MLM head runs on the
    masked positions only (about 15% of the tokens), which saves most of its ``C x V`` projection.

    Without ``nsp`` (RoBERTa's objective) the backbone's pooler and NSP head, if it has them, are frozen
    so that DDP does not wait for gradients they never get.

    Packed training batches (``batching: packed``: several instances per row, with ``document_ids`` and
    ``sequence_spans``, see `zoo.data.masking.PackedMLMCollator`) get the losses of the same instances
    padded; the backbone must take ``document_ids`` (`zoo.models.protocols.PackedHiddenStates`).

    ``predict_step`` fills masks: prediction batches hold ``input_ids``, ``attention_mask``,
    ``token_type_ids`` and ``fill_positions`` (B, T), non-zero at the ``[MASK]`` tokens to fill, and each
    mask gets its ``top_k`` most likely tokens (see `zoo.data.BertPretrainingDataModule`'s
    ``predict_file``).

    Args:
        backbone: Encoder with MLM (and NSP) heads, e.g. `zoo.models.bert.Bert`, or its spec.
        nsp: Add the next-sentence loss; the data must then provide ``next_sentence_label``.
        optimizer: Optimizer spec, see `BackboneTask`. Default
            ``zoo.tasks.masked_lm.OPTIMIZER``: AdamW at 1e-4, betas (0.9, 0.999), decay 0.01 (BERT's).
        lr_scheduler: Learning-rate schedule spec, see `BackboneTask` (``None``: constant). Default
            ``zoo.tasks.masked_lm.LR_SCHEDULER``: 10k warm-up steps (BERT: 10k of 1M), cosine to 0.
        top_k: Fillers ``predict_step`` returns per mask, most likely first.
        **kwargs: Other arguments: `BackboneTask` (forwarded): ``compile``, ``activation_checkpointing``,
            ``lora``.
    """

    backbone_protocol = MaskedLMEncoder

    def __init__(
        self,
        backbone: nn.Module | dict,
        *,
        nsp: bool = True,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        top_k: int = 5,
        **kwargs: Any,
    ) -> None:
        check_positive("MaskedLM", top_k=top_k)
        super().__init__(backbone, optimizer=optimizer, lr_scheduler=lr_scheduler, **kwargs)
        self.nsp = nsp
        self.top_k = top_k
        if not nsp:
            for name in ("pooler", "nsp_head"):
                module = getattr(self.backbone, name, None)
                if isinstance(module, nn.Module):
                    module.requires_grad_(False)
        self.val_metrics = _metrics()
        self.test_metrics = _metrics()

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Any:
        """The backbone's outputs at every position (``Bert``: MLM logits (B, T, V), NSP logits (B, 2))."""
        return self.backbone(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def losses(self, batch: dict[str, Tensor]) -> PretrainingLosses:
        """Encode the batch, run the MLM head on the masked positions only, add the NSP loss."""
        labels = batch["labels"]
        is_target = labels != IGNORE_INDEX  # (B, T)
        cls, mlm_logits = self._encode_targets(batch, is_target)  # (N, C), (M, V)
        mlm_targets = labels[is_target]  # (N,)
        mlm_loss = F.cross_entropy(mlm_logits.float(), mlm_targets)
        if not self.nsp:
            return PretrainingLosses(mlm_loss, mlm_loss, mlm_logits, mlm_targets, None, None)
        if "next_sentence_label" not in batch:
            raise KeyError("MaskedLM(nsp=True) needs 'next_sentence_label' in the batch; or set nsp=False")
        nsp_logits = self.backbone.nsp_logits(self.backbone.pool(cls.unsqueeze(1)))  # (N, 2)
        nsp_loss = F.cross_entropy(nsp_logits.float(), batch["next_sentence_label"])
        return PretrainingLosses(mlm_loss + nsp_loss, mlm_loss, mlm_logits, mlm_targets, nsp_loss, nsp_logits)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.losses(batch)
        n = len(batch.get("sequence_spans", batch["input_ids"]))  # examples
        self.log("train_loss", out.loss, batch_size=n)
        self.log("train_mlm_loss", out.mlm_loss, batch_size=n)
        if out.nsp_loss is not None:
            self.log("train_nsp_loss", out.nsp_loss, batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[list[list[tuple[int, float]]]]:
        """Fill masks: per example, per ``fill_positions`` entry in order, the ``top_k`` ``(token id,
        probability)`` pairs, most likely first (probabilities: softmax of the MLM logits over the
        whole vocabulary)."""
        is_target = batch["fill_positions"].bool()  # (B, T)
        _, logits = self._encode_targets(batch, is_target)  # (N, V)
        probabilities, token_ids = logits.float().softmax(-1).topk(min(self.top_k, logits.shape[-1]))
        fillers = [list(zip(i, p)) for i, p in zip(token_ids.tolist(), probabilities.tolist())]
        out, start = [], 0
        for count in is_target.sum(dim=1).tolist():
            out.append(fillers[start : start + count])
            start += count
        return out

    def setup(self, stage: str) -> None:
        """The base checks (positions, vocabulary, atomic checkpoints), plus NSP labels when ``nsp``."""
        super().setup(stage)
        if self.nsp and getattr(self.trainer.datamodule, "nsp", True) is False:
            raise ValueError(
                "MaskedLM(nsp=True) needs next-sentence labels but the data module has nsp=False"
            )

    def _encode_targets(self, batch: dict[str, Tensor], is_target: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states (N, C) at each example's [CLS] and MLM logits at the ``is_target`` (B, T)
        positions, in row-major order like ``labels[is_target]``. Packed rows (``document_ids``,
        ``sequence_spans``) hold several examples; their [CLS] states come back in example order."""
        # The last layer only computes the rows the losses read: the [CLS] of each example and the
        # targets, in row order (rows with fewer of them repeat position 0 as filler).
        is_cls = torch.zeros_like(is_target)  # (B, T)
        packed = self.packed_rows(batch, otherwise="padded")
        if packed:
            rows, starts, _ = batch["sequence_spans"].unbind(-1)  # (N,) each
            is_cls[rows, starts] = True
            packed = {"document_ids": batch["document_ids"]}  # padding is a sequence of its own
        else:
            is_cls[:, 0] = True
        is_read = is_cls | is_target
        counts = is_read.sum(dim=1)  # (B,)
        width = int(counts.max()) if counts.numel() else 0
        order = torch.argsort((~is_read).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, M)
        filled = torch.arange(width, device=is_target.device) < counts[:, None]  # (B, M)
        hidden = self.backbone.hidden_states(
            batch["input_ids"],
            attention_mask=None if packed else _padding_mask(batch.get("attention_mask")),
            token_type_ids=batch.get("token_type_ids"),
            output_positions=order * filled,
            **packed,
        )[filled]  # (R, C): the read positions in row-major order
        cls = hidden[is_cls[is_read]]  # (N, C) in row-major order
        if packed:  # row-major -> example order
            cls = cls[torch.argsort(torch.argsort(rows * is_target.shape[1] + starts))]
        return cls, self.backbone.mlm_logits(hidden[is_target[is_read]])  # (N, C), (M, V)

    def _evaluate(self, batch: dict[str, Tensor], stage: str, metrics: nn.ModuleDict) -> None:
        out = self.losses(batch)
        n = len(batch.get("sequence_spans", batch["input_ids"]))  # examples
        logits, targets = out.mlm_logits.detach().float(), out.mlm_targets
        metrics["mlm_loss"].update(F.cross_entropy(logits, targets, reduction="none"))
        metrics["mlm_acc"].update((logits.argmax(-1) == targets).float())
        metrics["mlm_ppl"].update(logits.unsqueeze(0), targets.unsqueeze(0))  # (1, N, V)
        names = ["mlm_loss", "mlm_acc", "mlm_ppl"]
        if out.nsp_logits is not None:
            metrics["nsp_acc"].update((out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).float())
            names.append("nsp_acc")
        for name in names:
            self.log(f"{stage}_{name}", metrics[name], prog_bar=name in ("mlm_loss", "nsp_acc"), batch_size=n)
