"""Translation: label-smoothed cross-entropy, inverse-square-root warm-up, beam search, sacreBLEU.

`Seq2SeqTask` is what every source-to-target task shares (teacher-forced loss, decoding with the shared
searches, a score of the decoded text against the references); `Translation` scores with sacreBLEU,
`zoo.tasks.summarization.Summarization` with ROUGE.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.text import SacreBLEUScore

from zoo.data.batch import IGNORE_INDEX
from zoo.errors import check_non_negative
from zoo.models.protocols import EncoderDecoder
from zoo.tasks.base import BackboneTask
from zoo.tasks.decoding import beam_search, greedy_search
from zoo.tasks.optim import LRSchedulerCallable, OptimizerCallable, adamw, inverse_sqrt_schedule
from zoo.tasks.optim import inverse_sqrt as inverse_sqrt  # its home before zoo.tasks.optim
from zoo.tasks.settings import SAMPLING, Decoding

OPTIMIZER = adamw(lr=5e-4, betas=(0.9, 0.98), weight_decay=0.0)
"""`Translation`'s default ``optimizer``: AdamW at 5e-4, betas (0.9, 0.98) (the paper's), no decay."""
LR_SCHEDULER = inverse_sqrt_schedule(warmup_steps=4000)
"""`Translation`'s default ``lr_scheduler``: `zoo.tasks.optim.InverseSqrt` with 4000 warm-up steps."""
DECODING = Decoding(num_beams=5, max_new_tokens=10, max_len_a=1.2)
"""`Translation`'s default ``decoding``: 5 beams, at most ``1.2 * source_length + 10`` tokens."""


class Seq2SeqTask(BackboneTask):
    """Base class of the encoder-decoder tasks: train on (source, target) batches with label-smoothed
    cross-entropy, decode with the shared searches (`zoo.tasks.decoding`), score the decoded text.

    A subclass says how text is scored: `text_metric` builds the metric (updated with the decoded texts
    and, per text, a list of raw references) and `text_scores` names what its ``compute()`` returns; each
    name is logged as ``val_<name>`` / ``test_<name>``, times 100. The defaults are `Translation`'s. A
    subclass that sets ``self.pretrained`` (weights to start from, as `zoo.tasks.FinetuneTask`'s
    ``pretrained``, see `zoo.models.pretrained.load_pretrained`) gets them loaded in ``setup`` when
    training starts, not when resuming or when a checkpoint is loaded.

    Args:
        backbone: Encoder-decoder network, e.g. `zoo.models.seq2seq.Transformer`, or its spec.
        label_smoothing: Share of the target probability spread over the vocabulary.
        decoding: How ``zoo test``, ``zoo predict`` and `generate` decode (`zoo.tasks.settings.Decoding`:
            ``num_beams``, ``max_new_tokens``, ``max_len_a``, ``min_length``, ``no_repeat_ngram_size``,
            ``length_penalty``; the sampling fields stay unset). Default ``zoo.tasks.translation.DECODING``:
            5 beams, at most ``1.2 * source_length + 10`` tokens.
        val_num_beams: Beams for the validation score (1: greedy, the cheapest; 0: no score, loss only).
        pad_token_id: Padding id of the data's tokenizer (never generated).
        bos_token_id: Start-of-target id (fed first, never generated).
        eos_token_id: End-of-sentence id.
        optimizer: Optimizer spec, see `BackboneTask`. Default ``zoo.tasks.translation.OPTIMIZER``:
            AdamW at 5e-4 (the peak, reached after the warm-up), betas (0.9, 0.98), no decay.
        lr_scheduler: Learning-rate schedule spec, see `BackboneTask` (``None``: constant). Default
            ``zoo.tasks.translation.LR_SCHEDULER``: linear warm-up over 4000 steps, then decay as
            ``1/sqrt(step)`` (`zoo.tasks.optim.InverseSqrt`).
        **kwargs: `BackboneTask`'s other arguments: ``compile``, ``activation_checkpointing``, ``lora``.
    """

    backbone_protocol = EncoderDecoder

    def __init__(
        self,
        backbone: nn.Module,
        *,
        label_smoothing: float = 0.1,
        decoding: Decoding = DECODING,
        val_num_beams: int = 1,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, optimizer=optimizer, lr_scheduler=lr_scheduler, **kwargs)
        check_non_negative(type(self).__name__, val_num_beams=val_num_beams)
        self.decoding = Decoding.of(decoding)
        self.decoding.check_unused(type(self).__name__, SAMPLING)
        self.save_hyperparameters({"decoding": self.decoding.plain()})  # plain: weights_only loads
        self.label_smoothing = label_smoothing
        self.val_num_beams = val_num_beams
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.pretrained: str | None = None  # a subclass that takes `pretrained` sets it
        self._initialised = False
        self.val_metrics = self._metrics()
        self.test_metrics = self._metrics()

    def text_metric(self) -> Metric:
        """A fresh metric of decoded text: ``update(predictions, references)``, a list of strings and, for
        each, a list of reference strings."""
        raise NotImplementedError

    def text_scores(self, computed: Any) -> dict[str, Tensor]:
        """``{name: value in 0-1}`` from what the metric's ``compute()`` returned."""
        raise NotImplementedError

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
        self._evaluate(batch, "val", self.val_metrics, self.val_num_beams)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics, self.decoding.num_beams)

    def on_validation_epoch_end(self) -> None:
        self._log_text_scores("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_text_scores("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[list[int]]:
        """Token ids of the output for every source in the batch (the data module's ``decode`` turns
        them into text: see `zoo.tasks.callbacks.TextPredictionWriter`)."""
        return self.generate(batch["input_ids"], batch.get("attention_mask"))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.load_pretrained_once()
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

    def generate(
        self, src_ids: Tensor, src_mask: Tensor | None = None, *, num_beams: int | None = None
    ) -> list[list[int]]:
        """Token ids (no special tokens) of the outputs for sources (B, S) with padding mask (B, S),
        decoded with ``num_beams`` (default: the task's ``decoding.num_beams``; 1 is greedy) and the rest
        of the task's ``decoding``: length limits, ``min_length`` and ``no_repeat_ngram_size``."""
        decoding = self.decoding
        num_beams = decoding.num_beams if num_beams is None else num_beams
        args = dict(
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            banned_ids=(self.pad_token_id, self.bos_token_id),
            max_len_a=decoding.max_len_a,
            max_len_b=decoding.max_new_tokens,
            min_len=decoding.min_length,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        )
        was_training = self.training
        self.eval()
        try:
            if num_beams == 1:
                hyps = greedy_search(self.backbone, src_ids, src_mask, **args)
            else:
                hyps = beam_search(
                    self.backbone,
                    src_ids,
                    src_mask,
                    beam_size=num_beams,
                    length_penalty=decoding.length_penalty,
                    **args,
                )
        finally:
            self.train(was_training)
        return [h.tokens for h in hyps]

    def _evaluate(self, batch: dict[str, Any], stage: str, metrics: nn.ModuleDict, num_beams: int) -> None:
        logits = self(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        tokens = int((labels != IGNORE_INDEX).sum())
        metrics["loss"].update(self.loss(logits, labels), weight=tokens)
        metrics["nll"].update(self.loss(logits, labels, label_smoothing=0.0), weight=tokens)
        n = labels.shape[0]
        self.log(f"{stage}_loss", metrics["loss"], prog_bar=True, batch_size=n)
        self.log(f"{stage}_nll", metrics["nll"], batch_size=n)
        if num_beams > 0:
            decode = self._text_decoder()
            hyps = self.generate(batch["input_ids"], batch["attention_mask"], num_beams=num_beams)
            metrics["text"].update([decode(h) for h in hyps], [[r] for r in batch["references"]])

    def _log_text_scores(self, stage: str, metrics: nn.ModuleDict) -> None:
        if metrics["text"].update_called:
            for name, value in self.text_scores(metrics["text"].compute()).items():
                self.log(f"{stage}_{name}", 100 * value, prog_bar=True)
            metrics["text"].reset()

    def _metrics(self) -> nn.ModuleDict:
        # token-weighted means and a corpus score: sums of counts, synchronised across ranks when computed
        return nn.ModuleDict({"loss": MeanMetric(), "nll": MeanMetric(), "text": self.text_metric()})

    def _text_decoder(self) -> Any:
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "decode"):
            raise RuntimeError(
                f"{type(self).__name__} scores decoded text: it needs a data module with decode(ids) -> text "
                "(or set val_num_beams: 0)"
            )
        return data.decode


class Translation(Seq2SeqTask):
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
    the raw references, decoded with ``val_num_beams`` (validation) or ``decoding.num_beams`` (test).

    Its arguments are `Seq2SeqTask`'s, with their defaults.
    """

    def text_metric(self) -> Metric:
        return SacreBLEUScore(tokenize="13a")

    def text_scores(self, computed: Any) -> dict[str, Tensor]:
        return {"bleu": computed}

    def translate(
        self, src_ids: Tensor, src_mask: Tensor | None = None, *, num_beams: int | None = None
    ) -> list[list[int]]:
        """Token ids (no special tokens) of the translations of sources (B, S): `Seq2SeqTask.generate`."""
        return self.generate(src_ids, src_mask, num_beams=num_beams)
