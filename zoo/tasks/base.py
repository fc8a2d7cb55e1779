"""The shared part of every zoo task: an injected backbone that checkpoints safely, and the optimizer."""

from __future__ import annotations

import inspect
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import Metric

from zoo.checkpoint import install_atomic_checkpoint_io
from zoo.models.spec import from_spec, spec_of

try:  # the config LightningCLI instantiated this module from (plain dicts), when it did
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older/newer Lightning without it
    _given_hyperparameters = None


def _cli_backbone_config() -> dict[str, Any] | None:
    given = _given_hyperparameters.get() if _given_hyperparameters is not None else None
    backbone = given.get("backbone") if isinstance(given, dict) else None
    return backbone if isinstance(backbone, dict) else None


class BackboneTask(L.LightningModule):
    """Base class for tasks built around an injected backbone network.

    The checkpoint never pickles the backbone: its hyper-parameters hold the backbone's spec
    (``{"class_path", "init_args"}``), so ``Task.load_from_checkpoint(path)`` works with
    ``weights_only=True`` whether the run came from ``zoo fit`` or from plain Python.

    Args:
        backbone: The network. Its spec, a ``{"class_path": ..., "init_args": ...}`` dict, is accepted too
            (that is how checkpoints rebuild it); the annotation stays ``nn.Module`` so the CLI validates
            the backbone's arguments against its signature.
        learning_rate: Peak learning rate of AdamW.
        weight_decay: Decoupled weight decay, applied to matrices only (not biases, norms' gains).
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps from 0 to ``learning_rate``.
        min_lr_ratio: Cosine decay ends at ``learning_rate * min_lr_ratio``.
        total_steps: Length of the schedule; ``None`` uses ``trainer.max_steps`` (or the estimate of
            optimizer steps when ``max_steps`` is unset).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        caller = inspect.currentframe()
        self.save_hyperparameters(ignore=["backbone"], frame=caller)
        if isinstance(backbone, dict):
            spec, backbone = backbone, from_spec(backbone)
        else:
            spec = spec_of(backbone) or _cli_backbone_config()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"backbone must be an nn.Module or a class_path spec, got {type(backbone).__name__}"
            )
        if spec is None:
            rank_zero_warn(
                f"{type(backbone).__name__} does not record its constructor arguments (subclass "
                "zoo.models.Configurable): checkpoints will need `backbone=...` passed to "
                "load_from_checkpoint."
            )
        else:
            self.save_hyperparameters({"backbone": spec}, frame=caller)
        self.backbone = backbone
        # read by configure_optimizers; kept as attributes because a subclass's saved hyper-parameters
        # only hold the subclass's own constructor arguments
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps

    def setup(self, stage: str) -> None:
        """Install atomic checkpoint writes and check the data against the backbone before any batch."""
        install_atomic_checkpoint_io(self.trainer)
        data = self.trainer.datamodule
        positions, data_len = getattr(self.backbone, "max_seq_len", None), getattr(data, "max_seq_len", None)
        if positions is not None and data_len is not None and data_len > positions:
            raise ValueError(
                f"the data's max_seq_len={data_len} exceeds the backbone's max_seq_len={positions} "
                "positions; shorten the data's max_seq_len or build the backbone with more positions"
            )
        vocab, data_vocab = getattr(self.backbone, "vocab_size", None), getattr(data, "vocab_size", None)
        if vocab is not None and data_vocab is not None and data_vocab > vocab:
            raise ValueError(
                f"the data's tokenizer has {data_vocab} token ids but the backbone's vocab_size is {vocab}: "
                "they do not belong together (in YAML, leave vocab_size out: the CLI links it)"
            )

    def on_validation_epoch_start(self) -> None:
        # Metric states made under validate()'s inference mode cannot be updated in place by fit()'s
        # no-grad validation loop; resetting makes fresh ones in whichever mode this loop runs.
        self._reset_metrics()

    def on_test_epoch_start(self) -> None:
        self._reset_metrics()

    def _reset_metrics(self) -> None:
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop instead of training on garbage; every rank takes the same decision so none hangs.
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise FloatingPointError(
                f"the training loss became {loss.detach().float().item()} at global step "
                f"{self.trainer.global_step} (epoch {self.trainer.current_epoch}); stopping. Checkpoints "
                "already written are kept: resume from the last good one with a lower learning rate, "
                "or check the data around this step."
            )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> BackboneTask:
        """Lightning's loader with ``weights_only=True`` by default (a checkpoint cannot run code) and
        errors that name the file: missing, truncated, unsafe, or written by another task."""
        path = Path(checkpoint_path)
        if isinstance(checkpoint_path, str | os.PathLike) and not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        try:
            return super().load_from_checkpoint(
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=weights_only,
                **kwargs,
            )
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{checkpoint_path}: refused to unpickle objects that are not plain tensors or containers "
                f"(weights_only=True); zoo checkpoints never contain any. Details: {str(err)[:300]}"
            ) from err
        except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as err:
            if "PytorchStreamReader" in str(err) or isinstance(err, OSError | EOFError | zipfile.BadZipFile):
                raise CheckpointError(
                    f"{checkpoint_path}: truncated or not a PyTorch checkpoint ({str(err)[:200]})"
                ) from err
            raise
        except CheckpointError as err:
            raise CheckpointError(f"{checkpoint_path}: {err}") from err

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo_task"] = _task_family(type(self))
        # Dropout draws from the global RNG: save it so a resumed run draws the same masks.
        checkpoint["zoo_rng"] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        written_by, expected = checkpoint.get("zoo_task"), _task_family(type(self))
        if written_by is not None and written_by != expected:
            raise CheckpointError(f"the checkpoint was written by a {written_by} task, not a {expected}")
        self._rng_to_restore = checkpoint.get("zoo_rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored just before the first resumed step, after everything else the restore touched.
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [g for g in self.parameter_groups() if g["params"]]
        fused = all(p.is_cuda for g in groups for p in g["params"]) or None
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, fused=fused)
        total = self.total_steps or self._schedule_length()
        schedule = warmup_cosine(
            warmup_steps=self.warmup_steps, total_steps=total, min_ratio=self.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: weight decay on matrices only (not biases, norms' gains), frozen
        parameters left out. Subclasses may split groups further (e.g. per-layer learning rates)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _schedule_length(self) -> int:
        # max_steps first: estimated_stepping_batches builds the train loader, which can drop a restored
        # loader state on resume (Lightning #20550).
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, unsafe, or from another task or model."""


def _task_family(cls: type) -> str:
    """The zoo task a class derives from (a user's subclass of CausalLM is a CausalLM)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("zoo.tasks.") and klass.__name__ != "BackboneTask":
            return f"{klass.__module__}.{klass.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def warmup_cosine(*, warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, cosine decay to ``min_ratio`` at
    ``total_steps``, constant ``min_ratio`` afterwards."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if step >= total_steps:
            return min_ratio
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))

    return multiplier
