"""The shared part of every zoo task: an injected backbone that checkpoints safely, and the optimizer."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from zoo.checkpoint import (
    CheckpointError,
    checkpoint_error,
    init_arguments,
    install_atomic_checkpoint_io,
    migrate_hparams,
    migrate_overrides,
    read_checkpoint,
    task_family,
    upgrade_checkpoint,
)
from zoo.models.pretrained import load_pretrained
from zoo.models.protocols import check_backbone
from zoo.models.spec import from_spec, spec_of
from zoo.nn import LoRA, apply_lora
from zoo.nn.lora import base_layers
from zoo.strategies import configure_blocks
from zoo.tasks.optim import (
    LRSchedulerCallable,
    OptimizerCallable,
    adamw,
    build_optimizer,
    build_scheduler,
    schedule_length,
    to_spec,
    warmup_cosine_schedule,
)
from zoo.tasks.optim import warmup_cosine as warmup_cosine  # its home before zoo.tasks.optim

OPTIMIZER = adamw(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
"""`BackboneTask`'s default ``optimizer``: AdamW, peak learning rate 3e-4, betas (0.9, 0.95), decay 0.1."""
LR_SCHEDULER = warmup_cosine_schedule(warmup_steps=100, min_lr_ratio=0.1)
"""`BackboneTask`'s default ``lr_scheduler``: 100 warm-up steps, cosine to 0.1 of the peak at max_steps."""

try:  # the config LightningCLI instantiated this module from (plain dicts), when it did
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older/newer Lightning without it
    _given_hyperparameters = None


def _cli_config(name: str) -> dict[str, Any] | None:
    """The ``{"class_path", "init_args"}`` config LightningCLI gave argument ``name``, if it did."""
    given = _given_hyperparameters.get() if _given_hyperparameters is not None else None
    value = given.get(name) if isinstance(given, dict) else None
    return value if isinstance(value, dict) else None


class BackboneTask(L.LightningModule):
    """Base class for tasks built around an injected backbone network.

    The checkpoint never pickles the backbone: its hyper-parameters hold the backbone's spec
    (``{"class_path", "init_args"}``), so ``Task.load_from_checkpoint(path)`` works with
    ``weights_only=True`` whether the run came from ``zoo fit`` or from plain Python.

    Args:
        backbone: The network. Its spec, a ``{"class_path": ..., "init_args": ...}`` dict, is accepted too
            (that is how checkpoints rebuild it); the annotation stays ``nn.Module`` so the CLI validates
            the backbone's arguments against its signature.
        optimizer: The optimizer as a ``{"class_path", "init_args"}`` spec (what YAML gives, e.g.
            ``class_path: torch.optim.SGD``), an optimizer class or ``functools.partial(cls, **init_args)``;
            the task passes the parameter groups (`parameter_groups`: its weight decay applies to
            matrices only, not biases or norms' gains). Default: `zoo.tasks.optim.adamw`.
        lr_scheduler: The learning-rate schedule the same way, stepped every optimizer step; the task
            passes the optimizer, and a ``total_steps`` argument left ``None`` becomes
            ``trainer.max_steps`` (or the estimate of optimizer steps when ``max_steps`` is unset).
            ``None``: a constant learning rate. Default: `zoo.tasks.optim.WarmupCosine`.
        compile: ``torch.compile`` each block the backbone declares in ``fsdp_units`` (per block, so it
            also works when FSDP wraps the blocks). Parameter names and checkpoints stay those of the
            plain model; incremental decoding (calls with a KV cache) runs uncompiled.
        activation_checkpointing: Recompute each declared block's activations in the backward pass
            (``torch.utils.checkpoint``): less memory for about one more forward pass of compute. For
            FSDP runs, ``zoo.strategies.FSDP(activation_checkpointing=True)`` does the same; use one.
        lora: Low-rank adapters (`zoo.nn.LoRA`: ``rank``, ``alpha``, ``dropout``, ``targets``) on the
            backbone's linear layers whose names match ``targets``; the rest of the backbone is frozen, so
            only the adapters and the task's own head train. ``None``: no adapters. ``zoo export`` merges
            them into plain weights. See the LoRA page of the docs.
    """

    compile_kwargs: ClassVar[dict[str, Any]] = {}
    """Keyword arguments of ``torch.compile`` when ``compile`` is on, e.g. ``{"mode": "max-autotune"}``;
    set on a subclass or an instance."""

    backbone_protocol: ClassVar[type | None] = None
    """The `zoo.models.protocols` protocol the backbone must satisfy (checked once, in ``__init__``, by
    `zoo.models.protocols.check_backbone`); ``None``: any ``nn.Module``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        optimizer: OptimizerCallable = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        compile: bool = False,
        activation_checkpointing: bool = False,
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        caller = inspect.currentframe()
        # hyper-parameters are what the concrete class takes: a checkpoint rebuilds it from them; the
        # optimizer and schedule are kept as plain specs, never as the callables LightningCLI passes
        base_only = _base_only_arguments(type(self))
        ignored = ["backbone", "optimizer", "lr_scheduler", "lora", *base_only]
        self.save_hyperparameters(ignore=ignored, frame=caller)
        # LightningCLI records the data links it skipped for a task without such an argument
        # (``num_labels``, ``label_names``); a checkpoint would pass them back through ``**kwargs``
        accepted = init_arguments(type(self))
        for name in [name for name in self.hparams if not name.startswith("_") and name not in accepted]:
            del self.hparams[name]
        self.optimizer_spec = to_spec(_cli_config("optimizer") or optimizer, "optimizer")
        self.lr_scheduler_spec = to_spec(
            lr_scheduler and (_cli_config("lr_scheduler") or lr_scheduler), "lr_scheduler"
        )
        lora = LoRA(**lora) if isinstance(lora, dict) else lora  # a checkpoint's plain dict
        specs = {
            "optimizer": self.optimizer_spec,
            "lr_scheduler": self.lr_scheduler_spec,
            "lora": dataclasses.asdict(lora) if lora is not None else None,  # plain: weights_only loads
        }
        specs = {name: spec for name, spec in specs.items() if name not in base_only}
        if specs:
            self.save_hyperparameters(specs, frame=caller)
        if isinstance(backbone, dict):
            spec, backbone = backbone, from_spec(backbone)
        else:
            spec = spec_of(backbone) or _cli_config("backbone")
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"backbone must be an nn.Module or a class_path spec, got {type(backbone).__name__}"
            )
        if self.backbone_protocol is not None:
            check_backbone(backbone, self.backbone_protocol, task=type(self).__name__)
        if spec is None:
            rank_zero_warn(
                f"{type(backbone).__name__} does not record its constructor arguments (subclass "
                "zoo.models.Configurable): checkpoints will need `backbone=...` passed to "
                "load_from_checkpoint."
            )
        else:
            self.save_hyperparameters({"backbone": spec}, frame=caller)
        if lora is not None:  # before any weights load: checkpoints hold the adapters
            apply_lora(
                backbone, targets=list(lora.targets), rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout
            )
        self.lora = lora
        self.backbone = backbone
        self.compile_blocks = compile  # not `self.compile`: that is nn.Module.compile()
        self.activation_checkpointing = activation_checkpointing
        # first step whose loss was not finite (-1: none yet) and that loss, kept on the device
        self._bad_step: torch.Tensor | None = None
        self._bad_loss: torch.Tensor | None = None
        self._checked_step = -1

    def flops_per_token(self, seq_len: int) -> int | None:
        """Training FLOPs (forward and backward) per token at sequence length ``seq_len``: the backbone's
        ``flops_per_token`` (nanoGPT's ``6N + 12·L·H·Q·T``), ``None`` when it has none. The
        `zoo.tasks.monitor.ProgressMonitor` turns it into model FLOPs utilisation (MFU)."""
        estimate = getattr(self.backbone, "flops_per_token", None)
        return estimate(seq_len) if callable(estimate) else None

    def packed_rows(self, batch: dict[str, Tensor], *, otherwise: str) -> dict[str, Tensor]:
        """``{"document_ids": ...}`` to pass to the backbone for a batch of packed rows (`zoo.data.collate.
        pack_batch`), ``{}`` for any other batch.

        Raises:
            ValueError: Packed rows for a backbone that cannot keep them apart (no
                ``accepts_document_ids``); the message says to use ``batching: <otherwise>``.
        """
        if "document_ids" not in batch:
            return {}
        if not getattr(self.backbone, "accepts_document_ids", False):
            raise ValueError(
                f"packed batches (batching: packed) need a backbone whose hidden_states takes document_ids "
                f"(zoo.models.protocols.PackedHiddenStates); {type(self.backbone).__name__} does not: use "
                f"batching: {otherwise}"
            )
        return {"document_ids": batch["document_ids"]}

    def configure_model(self) -> None:
        """Apply ``activation_checkpointing`` and ``compile`` to each block of the backbone's ``fsdp_units``
        (`zoo.strategies.configure_blocks`).

        Lightning calls this before every fit, validate, test and predict, before a strategy wraps the
        model; a block already set up the same way is left alone.
        """
        configure_blocks(
            self,
            compile=self.compile_blocks,
            activation_checkpointing=self.activation_checkpointing,
            compile_kwargs=self.compile_kwargs,
            strategy=self._trainer.strategy if self._trainer is not None else None,
        )

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

    def load_pretrained_once(self) -> None:
        """Load the task's ``pretrained`` weights (`zoo.models.pretrained.load_pretrained`) into the backbone
        the first time it is set up for a fresh run, from the tasks' ``setup``. Once per module: a later
        validate()/predict() must not undo the training, and weights restored from a checkpoint (resume,
        ``load_from_checkpoint``: `on_load_checkpoint`) win over the pretrained ones."""
        pretrained = getattr(self, "pretrained", None)
        if pretrained and not getattr(self, "_initialised", False) and self.trainer.ckpt_path is None:
            with base_layers(self.backbone):  # the pretrained weights have no adapters (lora)
                load_pretrained(self.backbone, pretrained)
            rank_zero_info(f"backbone initialised from {pretrained}")
        self._initialised = True

    def weights_from_checkpoint(self) -> None:
        """Say that a checkpoint will supply the weights (``zoo ... --ckpt_path``), so `load_pretrained_once`
        neither reads nor announces the ``pretrained`` ones that the checkpoint would overwrite."""
        self._initialised = True

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

    def on_fit_start(self) -> None:
        rank_zero_info(f"attention: scaled_dot_product_attention backends {sdpa_backends(self.device)}")

    def on_train_start(self) -> None:
        self._bad_step = self._bad_loss = None
        self._checked_step = -1

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop instead of training on garbage, without a host-device sync per step: the first bad step
        # is recorded on the device and read by `check_finite_loss`, once per logging interval, before
        # every checkpoint and at the end of training.
        loss = loss.detach()
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = ~torch.isfinite(loss).all() & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.trainer.global_step, self._bad_step)
        self._bad_loss = torch.where(first, loss.float(), self._bad_loss)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        every = self.trainer.log_every_n_steps or 50
        if step != self._checked_step and step % every == 0:
            self._checked_step = step
            self.check_finite_loss()

    def on_train_end(self) -> None:
        self.check_finite_loss()

    def check_finite_loss(self) -> None:
        """Raise `FloatingPointError` naming the first step whose training loss was NaN or infinite on
        any rank since training started. Every rank must call it (one all-reduce); one host sync."""
        if self._bad_step is None:
            return
        never = torch.iinfo(torch.long).max
        step = torch.where(self._bad_step < 0, never, self._bad_step)
        agreed = self.trainer.strategy.reduce(step.clone(), reduce_op="min")
        first, mine, loss = torch.stack([agreed.double(), step.double(), self._bad_loss.double()]).tolist()
        if first >= never:
            return
        value = loss if mine == first else "non-finite on another rank"
        raise FloatingPointError(
            f"the training loss became {value} at global step {int(first)}; stopping. Checkpoints "
            "written before that step are kept (none is written after it): resume from the last good "
            "one with a lower learning rate, or check the data around this step."
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
        source, given = None, contextlib.nullcontext()
        if isinstance(checkpoint_path, str | os.PathLike):
            # missing, not a zip archive (truncated, text) or unsafe: named here; old layouts migrated
            checkpoint = read_checkpoint(path, mmap=True)
            kwargs = migrate_overrides(kwargs, checkpoint.get("hyper_parameters"), cls)  # flat decoding
            source = _migrated(checkpoint, cls)
            given = _as_given(checkpoint.get("hyper_parameters"), cls)
        try:
            with given:  # a CLI checkpoint's config, so the rebuilt task records the same specs
                return super().load_from_checkpoint(
                    checkpoint_path if source is None else source,
                    map_location=map_location,
                    hparams_file=hparams_file,
                    strict=strict,
                    weights_only=weights_only,
                    **kwargs,
                )
        except CheckpointError as err:
            raise CheckpointError(f"{checkpoint_path}: {err}") from err
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, RuntimeError) and "PytorchStreamReader" not in str(err):
                raise
            raise checkpoint_error(checkpoint_path, err) from err

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.check_finite_loss()  # weights updated with a non-finite loss are never saved
        checkpoint["zoo_task"] = task_family(type(self))
        # Dropout draws from the global RNG: save it so a resumed run draws the same masks.
        checkpoint["zoo_rng"] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        written_by, expected = checkpoint.get("zoo_task"), task_family(type(self))
        if written_by is not None and written_by != expected:
            raise CheckpointError(f"the checkpoint was written by a {written_by} task, not a {expected}")
        upgrade_checkpoint(checkpoint, self)  # an earlier zoo's weight names and optimizer order
        self._rng_to_restore = checkpoint.get("zoo_rng")
        self._initialised = True  # the checkpoint's weights win over `pretrained` (load_pretrained_once)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored just before the first resumed step, after everything else the restore touched.
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None

    def configure_optimizers(self) -> dict[str, Any]:
        """The injected ``optimizer`` over `parameter_groups`, and ``lr_scheduler`` stepped every step."""
        groups = [g for g in self.parameter_groups() if g["params"]]
        optimizer = build_optimizer(self.optimizer_spec, groups)
        scheduler = build_scheduler(self.lr_scheduler_spec, optimizer, lambda: schedule_length(self.trainer))
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer: its weight decay on matrices only (biases and norms'
        gains get ``weight_decay=0``), frozen parameters left out. Subclasses may split groups further;
        a group's ``lr_scale`` multiplies the optimizer's learning rate (e.g. per-layer rates)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def sdpa_backends(device: torch.device) -> str:
    """Which ``scaled_dot_product_attention`` kernels may run on ``device``: on CUDA the enabled ones
    among flash, mem-efficient, cuDNN and math (SDPA picks the fastest that fits the inputs)."""
    if device.type != "cuda":
        return f"math/{device.type}"
    flags = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "mem-efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
    }
    enabled = [name for name, on in flags.items() if on]
    return "enabled: " + (", ".join(enabled) or "none")


def _base_only_arguments(cls: type) -> list[str]:
    """`BackboneTask` arguments that ``cls`` (a subclass) does not take, e.g. ``compile``."""
    own = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        return []
    return [name for name in inspect.signature(BackboneTask.__init__).parameters if name not in own]


def _as_given(hparams: Any, task: type) -> contextlib.AbstractContextManager:
    """For hyper-parameters LightningCLI wrote (they name its ``_instantiator``), the context in which
    the CLI built the task: its nested ``{"class_path", "init_args"}`` configs reach `_cli_config`, so a
    backbone whose parts are plain modules keeps its spec when the checkpoint is loaded again."""
    if not isinstance(hparams, dict) or "_instantiator" not in hparams or _given_hyperparameters is None:
        return contextlib.nullcontext()
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    given = {k: v for k, v in migrate_hparams(hparams, task).items() if k != "_instantiator"}
    return _given_hyperparameters_context(hparams=given, instantiator=hparams["_instantiator"])


def _migrated(checkpoint: dict[str, Any], task: type) -> io.BytesIO | None:
    """The checkpoint with hyper-parameters in today's layout (see `zoo.checkpoint.migrate_hparams`),
    or ``None`` when they already are."""
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or migrate_hparams(hparams, task) is hparams:
        return None
    checkpoint["hyper_parameters"] = migrate_hparams(hparams, task)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer
