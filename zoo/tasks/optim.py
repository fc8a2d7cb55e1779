"""Optimizer and learning-rate schedule, injected into a task as plain ``{"class_path", "init_args"}`` specs.

A task takes ``optimizer`` and ``lr_scheduler`` the way LightningCLI's ``OptimizerCallable`` and
``LRSchedulerCallable`` work (a class whose first argument, the parameters or the optimizer, the task
supplies), and keeps them in its hyper-parameters as specs, so a checkpoint still loads with
``weights_only=True``. zoo's defaults: `adamw` (weight decay on matrices only, fused on CUDA) and
`WarmupCosine`; `InverseSqrt` for translation; ``lr_scheduler=None`` keeps the learning rate constant.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from zoo.checkpoint import migrate_hparams as migrate_hparams  # its home before zoo.checkpoint

OptimizerCallable = Callable[[Iterable], Optimizer]
"""What ``optimizer`` is typed as: in YAML a ``{class_path, init_args}`` of any ``torch.optim`` class."""
LRSchedulerCallable = Callable[[Optimizer], LRScheduler]
"""What ``lr_scheduler`` is typed as: a schedule class whose first argument is the optimizer."""


def adamw(*, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.01) -> dict:
    """Spec of ``torch.optim.AdamW`` for a task's ``optimizer``: decay applies to the groups that do not
    set their own (`BackboneTask.parameter_groups` exempts biases and norms' gains); fused on CUDA."""
    return {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": lr, "betas": betas, "weight_decay": weight_decay},
    }


def warmup_cosine_schedule(
    *, warmup_steps: int = 100, min_lr_ratio: float = 0.1, total_steps: int | None = None
) -> dict:
    """Spec of `WarmupCosine` for a task's ``lr_scheduler``."""
    init_args = {"warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "total_steps": total_steps}
    return {"class_path": f"{__name__}.WarmupCosine", "init_args": init_args}


def inverse_sqrt_schedule(*, warmup_steps: int = 4000) -> dict:
    """Spec of `InverseSqrt` for a task's ``lr_scheduler``."""
    return {"class_path": f"{__name__}.InverseSqrt", "init_args": {"warmup_steps": warmup_steps}}


class WarmupCosine(LambdaLR):
    """Linear warm-up to the optimizer's learning rate, then cosine decay to ``min_lr_ratio`` times it.

    Args:
        optimizer: The optimizer (the task passes it).
        warmup_steps: Linear warm-up steps from 0 to the peak.
        min_lr_ratio: Cosine decay ends at the peak times this, and stays there.
        total_steps: Length of the schedule; ``None`` lets the task use ``trainer.max_steps`` (or the
            estimate of optimizer steps when ``max_steps`` is unset).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        total_steps: int | None = None,
    ) -> None:
        if total_steps is None:
            raise ValueError(
                "lr_scheduler: WarmupCosine needs total_steps (a task fills it from the trainer)"
            )
        schedule = warmup_cosine(warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_lr_ratio)
        super().__init__(optimizer, schedule)


class InverseSqrt(LambdaLR):
    """The schedule of "Attention Is All You Need": linear warm-up to the optimizer's learning rate at
    ``warmup_steps``, then decay as ``sqrt(warmup_steps / step)``; it has no length.

    Args:
        optimizer: The optimizer (the task passes it).
        warmup_steps: Linear warm-up steps.
    """

    def __init__(self, optimizer: Optimizer, *, warmup_steps: int = 4000) -> None:
        super().__init__(optimizer, inverse_sqrt(warmup_steps=warmup_steps))


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


def inverse_sqrt(*, warmup_steps: int):
    """LR multiplier of "Attention Is All You Need": linear warm-up to 1 at ``warmup_steps``, then
    ``sqrt(warmup_steps / step)``."""

    def multiplier(step: int) -> float:
        step += 1
        return step / warmup_steps if step < warmup_steps else (warmup_steps / step) ** 0.5

    return multiplier


def to_spec(value: Any, name: str) -> dict | None:
    """The plain ``{"class_path", "init_args"}`` spec of an injected optimizer or schedule.

    Args:
        value: A spec, a class, ``functools.partial(cls, **init_args)`` (what LightningCLI builds from
            YAML), or ``None``.
        name: The argument's name, for errors.

    Raises:
        ValueError: ``value`` is none of those, or its arguments are not plain values.
    """
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        spec = {"class_path": value["class_path"], "init_args": dict(value.get("init_args") or {})}
    elif isinstance(value, type):
        spec = {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": {}}
    elif isinstance(value, functools.partial) and (cls := _partial_class(value)) is not None:
        spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(value.keywords)}
    else:
        raise ValueError(
            f"{name} must be a {{'class_path': ..., 'init_args': {{...}}}} spec, a class or "
            f"functools.partial(cls, **kwargs); got {value!r}"
        )
    if not _plain(spec["init_args"]):
        raise ValueError(f"{name}: init_args must be plain numbers, strings, lists or dicts, got {value!r}")
    return copy.deepcopy(spec)


def build_optimizer(spec: dict, groups: list[dict[str, Any]]) -> Optimizer:
    """The optimizer of ``spec`` over parameter ``groups``; a group's ``lr_scale`` multiplies the
    optimizer's learning rate, and ``torch.optim.AdamW`` is fused when every parameter is on CUDA."""
    cls, init_args = _import(spec["class_path"]), dict(spec["init_args"])
    scales = [group.pop("lr_scale", None) for group in groups]
    if cls is torch.optim.AdamW and init_args.get("fused") is None:
        init_args["fused"] = all(p.is_cuda for g in groups for p in g["params"]) or None
    optimizer = cls(groups, **init_args)
    for group, scale in zip(optimizer.param_groups, scales):
        if scale is not None:
            group["lr"] = group["lr"] * scale
    return optimizer


def build_scheduler(spec: dict | None, optimizer: Optimizer, length: Callable[[], int]) -> LRScheduler | None:
    """The schedule of ``spec`` for ``optimizer`` (``None``: none); a ``total_steps`` argument left
    ``None`` gets ``length()``."""
    if spec is None:
        return None
    cls, init_args = _import(spec["class_path"]), dict(spec["init_args"])
    if "total_steps" in inspect.signature(cls).parameters and init_args.get("total_steps") is None:
        init_args["total_steps"] = length()
    return cls(optimizer, **init_args)


def schedule_length(trainer: Any) -> int:
    """Default schedule length: ``trainer.max_steps``, else the trainer's estimate of optimizer steps."""
    # max_steps first: estimated_stepping_batches builds the train loader, which can drop a restored
    # loader state on resume (Lightning #20550).
    if trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    return int(trainer.estimated_stepping_batches)


def with_init_args(spec: dict, **init_args: Any) -> dict:
    """A copy of ``spec`` with some ``init_args`` changed, e.g. a task's default optimizer at another
    learning rate: ``with_init_args(zoo.tasks.causal_lm.OPTIMIZER, lr=1e-4)``."""
    return {"class_path": spec["class_path"], "init_args": {**copy.deepcopy(spec["init_args"]), **init_args}}


def _partial_class(value: functools.partial) -> type | None:
    # functools.partial(cls, **kw) from Python, or jsonargparse's partial(wrapper, instantiator, cls, **kw)
    if isinstance(value.func, type):
        return None if value.args else value.func
    return value.args[-1] if value.args and isinstance(value.args[-1], type) else None


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import class_path {class_path!r}: {err}") from err
