"""Checkpoint files that are either complete or absent.

Lightning's default writer hands the file to fsspec, whose local "transaction" may stage it in the system
temp directory and *copy* it into place, so a kill at the wrong moment can leave a truncated
``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames: a reader
(``--ckpt_path last`` included) sees the previous complete file or the new complete file, never a part.
Zoo tasks install it automatically when the trainer uses the default writer.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
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


# top-level hyper-parameters of checkpoints written before optimizer/lr_scheduler were injected, with the
# defaults BackboneTask had then (a subclass that did not list one passed the default)
_OLD_OPTIMIZER = {
    "learning_rate": ("lr", 3e-4),
    "betas": ("betas", (0.9, 0.95)),
    "weight_decay": ("weight_decay", 0.1),
}
_OLD_SCHEDULE = {"warmup_steps": 100, "min_lr_ratio": 0.1, "total_steps": None}
_RENAMED = {"pad_id": "pad_token_id", "bos_id": "bos_token_id", "eos_id": "eos_token_id"}  # Translation
_RENAMED_BACKBONE = {"tie_output": "tie_weights"}  # seq2seq Transformer


def migrate_hparams(hparams: dict[str, Any], task: type | str | None) -> dict[str, Any]:
    """Hyper-parameters of an older checkpoint in today's layout; today's come back unchanged (the same
    object).

    Older layouts: ``learning_rate``, ``betas``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio``,
    ``total_steps`` at the top level (before ``optimizer``/``lr_scheduler`` existed) become AdamW and the
    task's default schedule class with the old values; ``pad_id``/``bos_id``/``eos_id`` become
    ``pad_token_id``/``bos_token_id``/``eos_token_id`` and the backbone's ``tie_output`` ``tie_weights``;
    for a task that takes ``decoding`` (`zoo.tasks.settings.Decoding`), the flat decoding arguments
    (``beam_size``, ``max_len_b``, ``min_len``, ``max_new_tokens``, ``temperature``, ...) move into it,
    by their new names (`DECODING_RENAMES`), and ``val_beam_size`` becomes ``val_num_beams``."""
    hparams = _migrated_decoding(_renamed_hparams(hparams), task)
    old = set(_OLD_OPTIMIZER) | set(_OLD_SCHEDULE)
    if not old & set(hparams) or "optimizer" in hparams:
        return hparams
    new = {k: v for k, v in hparams.items() if k not in old}
    init_args = {arg: hparams.get(key, default) for key, (arg, default) in _OLD_OPTIMIZER.items()}
    new["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": init_args}
    schedule = _default_schedule(_task_class(task))
    if schedule is not None:
        cls = _import_class(schedule["class_path"])
        accepted = inspect.signature(cls).parameters
        old_args = {k: hparams.get(k, d) for k, d in _OLD_SCHEDULE.items() if k in accepted}
        schedule = {"class_path": schedule["class_path"], "init_args": {**schedule["init_args"], **old_args}}
    new["lr_scheduler"] = schedule
    return new


def _renamed_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with the arguments renamed since it was written (``hparams`` itself when none was)."""
    backbone = hparams.get("backbone")
    init_args = backbone.get("init_args") if isinstance(backbone, dict) else None
    stale = set(_RENAMED) & set(hparams)
    stale_backbone = set(_RENAMED_BACKBONE) & set(init_args or {})
    if not stale and not stale_backbone:
        return hparams
    new = {_RENAMED.get(k, k): v for k, v in hparams.items()}
    if stale_backbone:
        renamed = {_RENAMED_BACKBONE.get(k, k): v for k, v in init_args.items()}
        new["backbone"] = {**backbone, "init_args": renamed}
    return new


def _default_schedule(task: type | None) -> dict | None:
    from zoo.tasks.optim import to_spec, warmup_cosine_schedule  # tasks sit above this module

    param = init_parameter(task, "lr_scheduler") if task is not None else None
    default = param.default if param is not None else inspect.Parameter.empty
    if isinstance(default, dict):
        return to_spec(default, "lr_scheduler")
    return warmup_cosine_schedule()


DECODING_RENAMES = {
    "beam_size": "num_beams",
    "num_beams": "num_beams",
    "max_len_b": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "max_len_a": "max_len_a",
    "min_len": "min_length",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
    "length_penalty": "length_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "stop_tokens": "stop_tokens",
}
"""Flat task arguments of an earlier zoo (Translation/Summarization, CausalLM) -> their `Decoding` field."""
RENAMED_TASK_ARGS = {"val_beam_size": "val_num_beams"}
"""Task arguments renamed in place (Seq2SeqTask)."""


def _task_class(task: type | str | None) -> type | None:
    if isinstance(task, str):
        try:
            return _import_class(task)
        except ValueError:
            return None
    return task


def takes_decoding(task: type | str | None) -> bool:
    """Whether ``task`` (a class or its path) takes ``decoding`` (a `zoo.tasks.settings.Decoding`)."""
    cls = _task_class(task)
    return cls is not None and init_parameter(cls, "decoding") is not None


def _migrated_decoding(hparams: dict[str, Any], task: type | str | None) -> dict[str, Any]:
    """``hparams`` with flat decoding arguments moved into ``decoding`` (``hparams`` itself when none is
    there or ``task`` takes no ``decoding``); the moved values win over a ``decoding`` already given."""
    flat = set(DECODING_RENAMES) & set(hparams)
    renamed = set(RENAMED_TASK_ARGS) & set(hparams)
    if not (flat or renamed) or not takes_decoding(task):
        return hparams
    new = {RENAMED_TASK_ARGS.get(k, k): v for k, v in hparams.items() if k not in flat}
    if flat:
        base = hparams.get("decoding")
        if base is None:
            default = init_parameter(_task_class(task), "decoding").default
            base = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}
        moved = {DECODING_RENAMES[k]: hparams[k] for k in flat}
        if "stop_tokens" in moved:
            moved["stop_tokens"] = list(moved["stop_tokens"] or [])
        new["decoding"] = {**dict(base), **moved}
    return new


def _import_class(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import class_path {class_path!r}: {err}") from err


def migrate_overrides(overrides: dict[str, Any], hparams: Any, task: type | str | None) -> dict[str, Any]:
    """``load_from_checkpoint``'s keyword overrides in today's names: a flat decoding one (``temperature=
    0.5``) changes that field of the checkpoint's ``decoding`` and keeps the rest (``overrides`` itself
    when none is flat)."""
    if not (set(DECODING_RENAMES) | set(RENAMED_TASK_ARGS)) & set(overrides):
        return overrides
    saved = migrate_hparams(hparams, task).get("decoding") if isinstance(hparams, dict) else None
    base = {"decoding": saved} if saved is not None and "decoding" not in overrides else {}
    return _migrated_decoding({**base, **overrides}, task)


def migrate_args(args: list[str], task: type | str | None) -> list[str]:
    """Command-line arguments in today's names: ``--model.init_args.beam_size=4`` (or ``--model.beam_size
    4``) becomes ``--model.init_args.decoding.num_beams=4`` for a task that takes ``decoding``, and
    ``val_beam_size`` becomes ``val_num_beams``; ``args`` itself when nothing is renamed."""
    if not takes_decoding(task):
        return args
    new = []
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--model."):
            name, eq, value = arg[len("--model.") :].partition("=")
            name = name.removeprefix("init_args.")
            if name in DECODING_RENAMES:
                arg = f"--model.init_args.decoding.{DECODING_RENAMES[name]}{eq}{value}"
            elif name in RENAMED_TASK_ARGS:
                arg = f"--model.init_args.{RENAMED_TASK_ARGS[name]}{eq}{value}"
        new.append(arg)
    return new if new != list(args) else args


def migrate_config(config: Any, task: type | str | None) -> Any:
    """A parsed YAML config with the model's old flat decoding keys (``beam_size``, ``max_new_tokens``,
    ...) moved into ``model.init_args.decoding`` (`migrate_hparams`); ``config`` itself when none is."""
    model = config.get("model") if isinstance(config, dict) else None
    init_args = model.get("init_args") if isinstance(model, dict) else None
    if not isinstance(init_args, dict):
        return config
    migrated = _migrated_decoding(init_args, task)
    if migrated is init_args:
        return config
    return {**config, "model": {**model, "init_args": migrated}}


def init_parameter(cls: type, name: str) -> inspect.Parameter | None:
    """Argument ``name`` of ``cls(...)``, its default included: declared by its ``__init__`` or, where that
    passes ``**kwargs`` on, by the nearest parent's (as jsonargparse resolves it); ``None`` if not taken."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params and params[name].kind is not params[name].VAR_KEYWORD:
            return params[name]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
    return None


def init_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` accepts: its ``__init__``'s own and, where that passes
    ``**kwargs`` on, those of the parents' (as jsonargparse resolves them)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names
