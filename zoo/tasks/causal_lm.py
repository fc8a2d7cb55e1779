"""Causal language modelling: next-token cross-entropy, perplexity, sampling."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.text import Perplexity

from zoo.tasks.base import BackboneTask
from zoo.tasks.generation import generate

IGNORE_INDEX = -100


class CausalLM(BackboneTask):
    """Train and sample a decoder-only language model.

    Batches hold ``input_ids`` (B, T) and ``labels`` (B, T), where ``labels[:, t]`` is the token that
    follows position ``t`` (``-100`` where there is none); an optional ``attention_mask`` marks padding.
    The backbone maps ``input_ids`` to logits (B, T, V).

    Args:
        backbone: Decoder network, e.g. `zoo.models.gpt2.GPT2`, or its spec.
        learning_rate: Peak AdamW learning rate.
        weight_decay: Weight decay on matrices.
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate as a fraction of the peak (cosine decay).
        total_steps: Schedule length; ``None`` follows the trainer.
        max_new_tokens: Tokens generated per prompt by ``predict_step``.
        temperature: Sampling temperature for ``predict_step`` (0 means greedy).
        top_k: Keep only the k most likely tokens when sampling (``None``: all).
        top_p: Nucleus sampling threshold (``None``: off).
        stop_tokens: Token ids that end a generated sequence.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        learning_rate: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        total_steps: int | None = None,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: list[int] | None = None,
    ) -> None:
        super().__init__(
            backbone,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            betas=betas,
            warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio,
            total_steps=total_steps,
        )
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.stop_tokens = list(stop_tokens or [])
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)
        self.test_perplexity = Perplexity(ignore_index=IGNORE_INDEX)
        self._last_step_time: float | None = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, T, V)."""
        return self.backbone(input_ids, attention_mask=attention_mask)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy over positions whose label is not ``-100``."""
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        loss = self.loss(logits, batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self._log_throughput(batch["input_ids"])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_perplexity)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_perplexity)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[list[int]]:
        """Continue each prompt in ``batch["prompts"]`` (lists of ids); returns the new ids."""
        return self.generate(
            batch["prompts"],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_tokens=self.stop_tokens,
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
    ) -> list[list[int]]:
        """Sample continuations of ``prompts`` (token-id lists of any lengths); see
        `zoo.tasks.generation.generate`. Greedy when ``temperature == 0``."""
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
            )
        finally:
            self.train(was_training)

    def _evaluate(self, batch: dict[str, Tensor], stage: str, perplexity: Perplexity) -> None:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        loss = self.loss(logits, batch["labels"])
        n = batch["input_ids"].shape[0]
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        perplexity.update(logits.float(), batch["labels"])
        self.log(f"{stage}_ppl", perplexity, batch_size=n)

    def _log_throughput(self, input_ids: Tensor) -> None:
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = input_ids.numel() * self.trainer.world_size
            self.log("train_tokens_per_sec", tokens / (now - self._last_step_time), batch_size=1)
        self._last_step_time = now
