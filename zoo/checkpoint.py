"""Checkpoint files that are either complete or absent.

Lightning's default writer hands the file to fsspec, whose local "transaction" may stage it in the system
temp directory and *copy* it into place, so a kill at the wrong moment can leave a truncated
``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames: a reader
(``--ckpt_path last`` included) sees the previous complete file or the new complete file, never a part.
Zoo tasks install it automatically when the trainer uses the default writer.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary + fsync + atomic rename for local paths
    (`zoo.io.atomic_write`: the file's mode follows the umask, as Lightning's own writer's does)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec semantics
        target = Path(path)
        for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        atomic_write(target, lambda f: torch.save(checkpoint, f))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, unsafe, or from another task or model."""


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True`` (it cannot run code); ``mmap`` maps the
    tensors from the file instead of reading them (for a look at the metadata).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: The file is truncated, not a PyTorch checkpoint, not a Lightning one, or carries
            pickled objects; the message names the file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut one has no directory
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint (not a zip archive)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a non-checkpoint
        raise checkpoint_error(path, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def checkpoint_error(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """The message for a ``torch.load`` failure: a refused pickle, or a file that is no checkpoint."""
    if isinstance(err, CheckpointError):
        return CheckpointError(f"{path}: {err}")
    if isinstance(err, pickle.UnpicklingError):
        return CheckpointError(
            f"{path}: refused to unpickle objects that are not plain tensors or containers "
            f"(weights_only=True); zoo checkpoints never contain any. Details: {str(err)[:300]}"
        )
    return CheckpointError(
        f"{path}: truncated or not a PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]})"
    )


def task_family(cls: type) -> str:
    """The zoo task a class derives from (a user's subclass of CausalLM is a CausalLM)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("zoo.tasks.") and klass.__name__ != "BackboneTask":
            return f"{klass.__module__}.{klass.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def check_task(checkpoint: dict[str, Any], class_path: str | None, path: str | os.PathLike) -> None:
    """Refuse a checkpoint that another task wrote, before its hyper-parameters rebuild the model.

    Raises:
        CheckpointError: ``"PATH: the checkpoint was written by a X task, not a Y"``.
    """
    written_by = checkpoint.get("zoo_task")
    if not written_by or not class_path:
        return
    module, _, name = class_path.rpartition(".")
    try:
        expected = task_family(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        return  # the parser reports a class_path that does not import
    if written_by != expected:
        raise CheckpointError(
            f"{path}: the checkpoint was written by a {written_by} task, not a {expected} "
            "(the config's model.class_path)"
        )


def check_fits(checkpoint: dict[str, Any], model: Any, datamodule: Any, path: str | os.PathLike) -> None:
    """Compare a checkpoint with the model and data module the config built, before Lightning loads it:
    a different tokenizer or differently shaped weights are named here, not in a state_dict error.

    Raises:
        ValueError: The data module builds another tokenizer, or weights differ in shape.
    """
    state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
    if isinstance(state, dict) and hasattr(datamodule, "check_tokenizer"):
        try:
            datamodule.check_tokenizer(state.get("tokenizer"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    ours = model.state_dict()
    theirs = checkpoint.get("state_dict") or {}
    if getattr(model, "backbone", None) is not None:
        theirs = upgrade_state_dict(theirs, model.backbone)  # an earlier zoo's names
    if not ours:
        return  # parameters made later (configure_model): Lightning checks them when it loads
    shapes = [
        f"{key} is {list(theirs[key].shape)} in the checkpoint but {list(value.shape)} here"
        for key, value in ours.items()
        if key in theirs and hasattr(theirs[key], "shape") and theirs[key].shape != value.shape
    ]
    if shapes:
        raise ValueError(
            f"{path}: the checkpoint's weights do not fit the model this config builds: "
            + "; ".join(shapes[:3])
            + (f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else "")
            + ". Build the model with the checkpoint's sizes (vocabulary, dimensions), or drop --ckpt_path"
        )


def upgrade_state_dict(
    state_dict: dict[str, Any], backbone: Any, prefix: str = "backbone."
) -> dict[str, Any]:
    """``state_dict`` with the backbone's keys in today's layout: each old key prefix (after ``prefix``)
    that the backbone's class lists in ``state_dict_renames`` is replaced by the new one. The tensors are
    the same objects; a state dict already in today's layout is returned as it is.
    """
    renames = getattr(type(backbone), "state_dict_renames", None) or {}
    if not renames:
        return state_dict
    longest_first = sorted(renames.items(), key=lambda item: -len(item[0]))
    upgraded = {_renamed(key, prefix, longest_first): value for key, value in state_dict.items()}
    return state_dict if list(upgraded) == list(state_dict) else upgraded


def _renamed(key: str, prefix: str, renames: list[tuple[str, str]]) -> str:
    if not key.startswith(prefix):
        return key
    inner = key[len(prefix) :]
    for old, new in renames:
        if inner.startswith(old):
            return prefix + new + inner[len(old) :]
    return key


def upgrade_checkpoint(checkpoint: dict[str, Any], task: Any) -> None:
    """Bring a checkpoint written before ``task``'s backbone renamed its weights into today's layout, in
    place: the ``state_dict`` keys (`upgrade_state_dict`) and the optimizer states, whose entries are
    positions within ``task.parameter_groups()``, re-indexed by parameter name (`permute_optimizer_state`;
    nothing moves where the renames kept the parameter order).
    """
    backbone, state_dict = getattr(task, "backbone", None), checkpoint.get("state_dict")
    if backbone is None or not isinstance(state_dict, dict):
        return
    upgraded = upgrade_state_dict(state_dict, backbone)
    if upgraded is state_dict:
        return
    checkpoint["state_dict"] = upgraded
    if checkpoint.get("optimizer_states"):
        old_order = saved_parameter_order(upgraded, task)
        groups = [group["params"] for group in task.parameter_groups() if group["params"]]
        for state in checkpoint["optimizer_states"]:
            permute_optimizer_state(state, old_order, groups)


def saved_parameter_order(state_dict: dict[str, Any], model: Any) -> dict[int, int]:
    """``{id(parameter): position}`` of ``model``'s parameters in the order a state dict (keys in today's
    names) lists them, which is the order of ``parameters()`` in the model that wrote it: buffers are left
    out and a tied weight counts at its first key."""
    by_name = dict(model.named_parameters(remove_duplicate=False))
    order: dict[int, int] = {}
    for key in state_dict:
        param = by_name.get(key)
        if param is not None and id(param) not in order:
            order[id(param)] = len(order)
    return order


def permute_optimizer_state(
    state: dict[str, Any], old_order: dict[int, int], groups: list[list[Any]]
) -> None:
    """Re-index an optimizer's ``state_dict`` (``state`` keyed by position, ``param_groups[i]["params"]``
    listing positions) from the parameter order of the model that saved it (``old_order``, see
    `saved_parameter_order`) to the order of today's ``groups`` (lists of parameters), in place.

    Each saved group holds the same parameters as today's group at its index; only their order may
    differ. Left unchanged when that does not hold (the optimizer's own load names the mismatch).
    """
    saved = state.get("param_groups") or []
    if len(saved) != len(groups) or any(
        len(g["params"]) != len(ours) or any(id(p) not in old_order for p in ours)
        for g, ours in zip(saved, groups)
    ):
        return
    old_state, new_state, position = state.get("state", {}), {}, 0
    for group, ours in zip(saved, groups):
        by_old_order = sorted(ours, key=lambda p: old_order[id(p)])
        old_index = {id(p): index for p, index in zip(by_old_order, group["params"])}
        group["params"] = list(range(position, position + len(ours)))
        for p in ours:
            if old_index[id(p)] in old_state:
                new_state[position] = old_state[old_index[id(p)]]
            position += 1
    state["state"] = new_state


def install_atomic_checkpoint_io(trainer: Any) -> None:
    """Swap the trainer's default checkpoint writer for :class:`AtomicCheckpointIO` (a custom one is kept)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
