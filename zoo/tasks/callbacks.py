"""Callbacks that turn generated token ids into text: samples after training, ``zoo predict`` output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from zoo.data.corpus import atomic_write_text


def _datamodule_codec(trainer: L.Trainer) -> Any:
    dm = trainer.datamodule
    if dm is None or not (hasattr(dm, "encode") and hasattr(dm, "decode")):
        raise RuntimeError("text generation callbacks need a data module with encode() and decode()")
    return dm


class GenerateSamples(L.Callback):
    """Print (and save) sampled continuations of prompts when training ends.

    Args:
        prompts: Text prompts; each gets ``num_samples`` continuations.
        num_samples: Samples per prompt.
        max_new_tokens: Length of each sample in tokens.
        temperature: Sampling temperature (0 means greedy).
        top_k: Top-k filtering (``None``: off).
        seed: Seed for the sampling generator, so samples are reproducible.
        output_file: Also write the samples here (``None``: print only).
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        *,
        num_samples: int = 2,
        max_new_tokens: int = 300,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
        output_file: str | None = None,
    ) -> None:
        self.prompts = prompts or ["\n"]
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.output_file = output_file

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        codec = _datamodule_codec(trainer)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        texts = []
        for prompt in self.prompts:
            ids = [codec.encode(prompt)] * self.num_samples
            new = pl_module.generate(
                ids,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                generator=generator,
            )
            texts += [prompt + codec.decode(n) for n in new]
        report = "".join(f"\n---------- sample {i + 1} ----------\n{t}\n" for i, t in enumerate(texts))
        print(report, flush=True)
        if self.output_file:
            Path(self.output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output_file).write_text(report, encoding="utf-8")


class TextPredictionWriter(BasePredictionWriter):
    """Write ``zoo predict`` generations as text, one block per prompt, to a file or stdout.

    Args:
        output_file: Destination; ``None`` prints to stdout.
        separator: Written after each generated text.
    """

    def __init__(self, output_file: str | None = None, *, separator: str = "\n") -> None:
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self.separator = separator
        self._started = False

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        codec = _datamodule_codec(trainer)
        prompts = batch.get("prompts") if isinstance(batch, dict) else None
        texts = []
        for i, new in enumerate(prediction):
            prefix = codec.decode(prompts[i]) if prompts is not None else ""
            texts.append(prefix + codec.decode(new) + self.separator)
        if self.output_file is None:
            sys.stdout.write("".join(texts))
            sys.stdout.flush()
            return
        path = Path(self.output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if self._started else "w", encoding="utf-8") as f:
            f.write("".join(texts))
        self._started = True


class PredictionWriter(BasePredictionWriter):
    """Write ``zoo predict`` outputs of fine-tuned models in the data's own format, in input order: the
    data module's ``format_prediction(index, prediction)`` turns each prediction into text (a label per
    line for classification, the input's CoNLL lines with the predicted tags for tagging).

    Args:
        output_file: Destination (written through a temporary file and renamed at the end, so an
            interrupted run never leaves a half-written file); ``None`` prints to stdout.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self._parts: list[str] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                "PredictionWriter keeps the input order on one device only; predict with devices=1"
            )
        self._parts = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        data = trainer.datamodule
        texts = [data.format_prediction(int(i), p) for i, p in zip(batch["index"], prediction)]
        if self.output_file is None:
            sys.stdout.write("".join(texts))
            sys.stdout.flush()
        else:
            self._parts.extend(texts)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_file is not None:
            path = Path(self.output_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, "".join(self._parts))
