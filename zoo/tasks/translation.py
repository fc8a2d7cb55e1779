"""Translation: label-smoothed cross-entropy, inverse-square-root warm-up, beam search, sacreBLEU."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import SacreBLEUScore

from zoo.data.batch import IGNORE_INDEX
from zoo.models.protocols import EncoderDecoder
from zoo.nn import LoRA
from zoo.tasks.base import BackboneTask
from zoo.tasks.decoding import beam_search, greedy_search
from zoo.tasks.optim import LRSchedulerCallable, OptimizerCallable, adamw, inverse_sqrt_schedule
from zoo.tasks.optim import inverse_sqrt as inverse_sqrt  # its home before zoo.tasks.optim

OPTIMIZER = adamw(lr=5e-4, betas=(0.9, 0.98), weight_decay=0.0)
"""`Translation`'s default ``optimizer``: AdamW at 5e-4, betas (0.9, 0.98) (the paper's), no decay."""
LR_SCHEDULER = inverse_sqrt_schedule(warmup_steps=4000)
"""`Translation`'s default ``lr_scheduler``: `zoo.tasks.optim.InverseSqrt` with 4000 warm-up steps."""


def _metrics() -> nn.ModuleDict:
    # token-weighted means and corpus BLEU: sums of counts, synchronised across ranks when computed
    return nn.ModuleDict({"loss": MeanMetric(), "nll": MeanMetric(), "bleu": SacreBLEUScore(tokenize="13a")})


class Translation(BackboneTask):
    """Train an encoder-decoder backbone on sentence pairs and translate with beam search.

    Batches hold ``input_ids`` and ``attention_mask`` (B, S) for the source, ``decoder_input_ids`` and
    ``labels`` (B, T) for the target (``labels`` is the input shifted by one, ``-100`` at padding) and,
    for evaluation, ``references`` (raw target text), as `zoo.data.parallel.ParallelTextDataModule`
    makes them.
    The backbone maps ``(src_ids, tgt_ids, attention_mask=...)`` to logits (B, T, V) and offers ``encode``,
    ``decode`` and ``init_cache`` for decoding (see `zoo.tasks.decoding`), as
    `zoo.models.seq2seq.Transformer` does.

    Validation and test report ``loss`` (label-smoothed, what training minimises), ``nll`` (plain
    cross-entropy) and ``bleu``: corpus sacreBLEU (13a tokenization, 0-100) of the decoded text against
    the raw references, decoded with ``val_beam_size`` (validation) or ``beam_size`` (test).

    Args:
        backbone: Encoder-decoder network, e.g. `zoo.models.seq2seq.Transformer`, or its spec.
        label_smoothing: Share of the target probability spread over the vocabulary.
        optimizer: Optimizer spec, see `BackboneTask`. Default ``zoo.tasks.translation.OPTIMIZER``:
            AdamW at 5e-4 (the peak, reached after the warm-up), betas (0.9, 0.98), no decay.
        lr_scheduler: Learning-rate schedule spec, see `BackboneTask` (``None``: constant). Default
            ``zoo.tasks.translation.LR_SCHEDULER``: linear warm-up over 4000 steps, then decay as
            ``1/sqrt(step)`` (`zoo.tasks.optim.InverseSqrt`).
        compile: See `BackboneTask`.
        activation_checkpointing: See `BackboneTask`.
        lora: See `BackboneTask`.
        beam_size: Beam width of ``zoo test``, ``zoo predict`` and `translate` (1: greedy).
        val_beam_size: Beam width for validation BLEU (1: greedy, the cheapest; 0: no BLEU, loss only).
        length_penalty: Beams are ranked by ``log_prob / length ** length_penalty``.
        max_len_a: Outputs are at most ``max_len_a * source_length + max_len_b`` tokens (``</s>``
            included), and never longer than the backbone's positions.
        max_len_b: See ``max_len_a``.
        pad_token_id: Padding id of the data's tokenizer (never generated).
        bos_token_id: Start-of-target id (fed first, never generated).
        eos_token_id: End-of-sentence id.
    """

    backbone_protocol = EncoderDecoder

    def __init__(
        self,
        backbone: nn.Module,
        *,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        compile: bool = False,
        activation_checkpointing: bool = False,
        lora: LoRA | None = None,
        beam_size: int = 5,
        val_beam_size: int = 1,
        length_penalty: float = 1.0,
        max_len_a: float = 1.2,
        max_len_b: int = 10,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
    ) -> None:
        super().__init__(
            backbone,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            compile=compile,
            activation_checkpointing=activation_checkpointing,
            lora=lora,
        )
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.val_beam_size = val_beam_size
        self.length_penalty = length_penalty
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.val_metrics = _metrics()
        self.test_metrics = _metrics()

    def forward(
        self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced logits (B, T, V)."""
        return self.backbone(input_ids, decoder_input_ids, attention_mask=attention_mask)

    def loss(self, logits: Tensor, labels: Tensor, label_smoothing: float | None = None) -> Tensor:
        """Mean (label-smoothed) cross-entropy over the target tokens whose label is not ``-100``."""
        smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=smoothing,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
        loss = self.loss(logits, batch["labels"])
        self.log("train_loss", loss, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics, self.val_beam_size)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics, self.beam_size)

    def on_validation_epoch_end(self) -> None:
        self._log_bleu("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_bleu("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[list[int]]:
        """Token ids of the translation of every source in the batch (the data module's ``decode`` turns
        them into text: see `zoo.tasks.callbacks.TextPredictionWriter`)."""
        return self.translate(batch["input_ids"], batch.get("attention_mask"))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.trainer.datamodule
        ours = {
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        theirs = {name: getattr(data, name, value) for name, value in ours.items()}
        if theirs != ours:
            raise ValueError(
                f"the data's special tokens {theirs} differ from the model's {ours}: set them in "
                "model.init_args to the data's"
            )

    def translate(
        self, src_ids: Tensor, src_mask: Tensor | None = None, *, beam_size: int | None = None
    ) -> list[list[int]]:
        """Token ids (no special tokens) of the translations of sources (B, S) with padding mask (B, S),
        decoded with ``beam_size`` (default: the task's; 1 is greedy)."""
        beam_size = self.beam_size if beam_size is None else beam_size
        args = dict(
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            banned_ids=(self.pad_token_id, self.bos_token_id),
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
        )
        was_training = self.training
        self.eval()
        try:
            if beam_size == 1:
                hyps = greedy_search(self.backbone, src_ids, src_mask, **args)
            else:
                hyps = beam_search(
                    self.backbone,
                    src_ids,
                    src_mask,
                    beam_size=beam_size,
                    length_penalty=self.length_penalty,
                    **args,
                )
        finally:
            self.train(was_training)
        return [h.tokens for h in hyps]

    def _evaluate(self, batch: dict[str, Any], stage: str, metrics: nn.ModuleDict, beam_size: int) -> None:
        logits = self(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        tokens = int((labels != IGNORE_INDEX).sum())
        metrics["loss"].update(self.loss(logits, labels), weight=tokens)
        metrics["nll"].update(self.loss(logits, labels, label_smoothing=0.0), weight=tokens)
        n = labels.shape[0]
        self.log(f"{stage}_loss", metrics["loss"], prog_bar=True, batch_size=n)
        self.log(f"{stage}_nll", metrics["nll"], batch_size=n)
        if beam_size > 0:
            decode = self._text_decoder()
            hyps = self.translate(batch["input_ids"], batch["attention_mask"], beam_size=beam_size)
            metrics["bleu"].update([decode(h) for h in hyps], [[r] for r in batch["references"]])

    def _log_bleu(self, stage: str, metrics: nn.ModuleDict) -> None:
        if metrics["bleu"].update_called:
            self.log(f"{stage}_bleu", 100 * metrics["bleu"].compute(), prog_bar=True)
            metrics["bleu"].reset()

    def _text_decoder(self) -> Any:
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "decode"):
            raise RuntimeError("BLEU needs a data module with decode(ids) -> text (or set val_beam_size: 0)")
        return data.decode
