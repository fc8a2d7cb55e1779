"""Callbacks that turn generated token ids into text: samples after training, ``zoo predict`` output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from zoo.errors import check_non_negative, check_positive
from zoo.io import atomic_write


def _datamodule_codec(trainer: L.Trainer) -> Any:
    dm = trainer.datamodule
    if dm is None or not (hasattr(dm, "encode") and hasattr(dm, "decode")):
        raise RuntimeError("text generation callbacks need a data module with encode() and decode()")
    return dm


def run_dir(trainer: L.Trainer) -> Path:
    """The run's own folder, where LightningCLI writes its ``config.yaml``: the first logger's version
    folder (``logs/version_N/``; each ``zoo fit`` or ``zoo predict`` opens the next one, a resumed ``fit``
    continues its own), or the trainer's ``default_root_dir`` without a logger.

    ``trainer.log_dir`` names the same folder but broadcasts it from rank 0, a collective that would hang
    a DDP run when called on rank 0 alone (as `GenerateSamples` does), so the logger is read here."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        return Path(trainer.default_root_dir)
    folder = logger.log_dir if isinstance(logger, TensorBoardLogger | CSVLogger) else logger.save_dir
    return Path(trainer.default_root_dir if folder is None else folder)


def output_path(trainer: L.Trainer, output_file: str | None, default_name: str) -> Path | None:
    """Where a writer puts its file: ``None`` means ``default_name`` in the run's folder (`run_dir`), so
    two runs in one ``default_root_dir`` keep their own files; ``"-"`` means stdout (``None`` returned);
    any other path is used as given."""
    if output_file == "-":
        return None
    return run_dir(trainer) / default_name if output_file is None else Path(output_file)


class GenerateSamples(L.Callback):
    """Print and save sampled continuations of prompts when training ends.

    Args:
        prompts: Text prompts; each gets ``num_samples`` continuations.
        num_samples: Samples per prompt.
        max_new_tokens: Length of each sample in tokens.
        temperature: Sampling temperature (0 means greedy).
        top_k: Top-k filtering (``None``: off).
        seed: Seed for the sampling generator, so samples are reproducible.
        output_file: Also write the samples here; ``None``: ``samples.txt`` in the run's folder
            (`run_dir`: ``logs/version_N/`` beside ``config.yaml``, or ``default_root_dir`` without a
            logger); ``"-"``: print only.
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
        check_positive("GenerateSamples", num_samples=num_samples, max_new_tokens=max_new_tokens, top_k=top_k)
        check_non_negative("GenerateSamples", temperature=temperature)
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
        path = output_path(trainer, self.output_file, "samples.txt")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, report)
            print(f"zoo: wrote {len(texts)} samples to {path}", file=sys.stderr, flush=True)


class PredictionWriter(BasePredictionWriter):
    """Write ``zoo predict`` outputs of fine-tuned models in the data's own format, in input order: the
    data module's ``format_prediction(index, prediction)`` turns each prediction into text (a label per
    line for classification, the input's CoNLL lines with the predicted tags for tagging).

    The file is written through a temporary file and renamed at the end, so an interrupted run never
    leaves a half-written file; the last line printed says where it is.

    Args:
        output_file: Destination; ``None``: ``predictions.txt`` in the run's folder (`run_dir`:
            ``logs/version_N/`` beside ``config.yaml``, or ``default_root_dir`` without a logger);
            ``"-"``: stdout.
    """

    default_name = "predictions.txt"
    """The file name in the run's folder when ``output_file`` is ``None``."""

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self._parts: list[str] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                f"{type(self).__name__} keeps the input order on one device only; predict with devices=1"
            )
        self._parts = []
        self._count = 0

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
        texts = self.format_batch(trainer, prediction, batch)
        self._count += len(texts)
        if output_path(trainer, self.output_file, self.default_name) is None:
            sys.stdout.write("".join(texts))
            sys.stdout.flush()
        else:
            self._parts.extend(texts)

    def format_batch(self, trainer: L.Trainer, prediction: Any, batch: Any) -> list[str]:
        """One text per example of the batch."""
        data = trainer.datamodule
        return [data.format_prediction(int(i), p) for i, p in zip(batch["index"], prediction)]

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = output_path(trainer, self.output_file, self.default_name)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, "".join(self._parts))
            print(f"zoo: wrote {self._count} predictions to {path}", file=sys.stderr, flush=True)


class TextPredictionWriter(PredictionWriter):
    """Write ``zoo predict`` generations as text: each prompt followed by its continuation.

    Args:
        output_file: Destination; ``None``: ``predictions.txt`` in the run's folder (`run_dir`:
            ``logs/version_N/`` beside ``config.yaml``, or ``default_root_dir`` without a logger);
            ``"-"``: stdout.
        separator: Written after each generated text.
    """

    def __init__(self, output_file: str | None = None, *, separator: str = "\n") -> None:
        super().__init__(output_file)
        self.separator = separator

    def format_batch(self, trainer: L.Trainer, prediction: Any, batch: Any) -> list[str]:
        codec = _datamodule_codec(trainer)
        prompts = batch.get("prompts") if isinstance(batch, dict) else None
        return [
            (codec.decode(prompts[i]) if prompts is not None else "") + codec.decode(new) + self.separator
            for i, new in enumerate(prediction)
        ]


class JsonlPredictionWriter(PredictionWriter):
    """Write ``zoo predict`` outputs as JSON Lines, one object per input record, in input order: the data
    module's ``prediction_record(index, prediction)`` (`zoo.data.chat_data.ChatDataModule`: the answer as
    ``"response"``, followed by the record's own fields).

    Args:
        output_file: Destination; ``None``: ``predictions.jsonl`` in the run's folder (`run_dir`:
            ``logs/version_N/`` beside ``config.yaml``, or ``default_root_dir`` without a logger);
            ``"-"``: stdout.
    """

    default_name = "predictions.jsonl"

    def format_batch(self, trainer: L.Trainer, prediction: Any, batch: Any) -> list[str]:
        data = trainer.datamodule
        if data is None or not hasattr(data, "prediction_record"):
            raise RuntimeError(
                f"{type(self).__name__} needs a data module with prediction_record(index, ids)"
            )
        records = (data.prediction_record(int(i), p) for i, p in zip(batch["index"], prediction))
        return [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
