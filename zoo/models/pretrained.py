"""Initialise an already built backbone from pretrained weights: a Hugging Face directory (or Hub name),
a GGUF file (llama.cpp's format; ``python:<package>`` for a package that holds one) or a checkpoint
written by a zoo task.

A recipe names the backbone's class and the weights to start from; `source_architecture` reads the
source's architecture (``config.json``, GGUF metadata or the checkpoint's hyper-parameters, never a
weight), which the CLI writes into the backbone's ``init_args`` (`fill_architecture`) so that nobody
copies ten numbers into YAML and the run's ``config.yaml`` and checkpoint still record them all. Before
copying a single tensor, this module checks that the backbone and the weights agree, naming every
argument that differs.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.checkpoint import upgrade_state_dict
from zoo.models.hf_io import PACKAGE_PREFIX, Converter, converter
from zoo.models.spec import import_class, spec_of

# Arguments that change no tensor shape or meaning of a weight: fine-tuning may choose them freely.
_FREE_ARGS = {"dropout", "attention_dropout", "with_pretraining_heads", "cross_attention_init"}
# Parts a pretraining checkpoint has and a fine-tuning backbone may leave out.
_OPTIONAL_PREFIXES = ("mlm_head.", "nsp_head.", "lm_head.")


def load_pretrained(backbone: nn.Module, source: str | os.PathLike) -> None:
    """Copy pretrained weights into ``backbone`` in place.

    Args:
        backbone: A zoo model (``Bert``, ``GPT2``, ...) built with the architecture of the weights.
        source: A zoo ``.ckpt`` file (its ``backbone.*`` weights are used), a ``.gguf`` file or
            ``python:<package>`` holding one (a family with a GGUF reader: Llama), a Hugging Face model
            directory (or ``python:<package>`` holding one), or a Hub name (needs ``huggingface_hub`` and
            network).

    Raises:
        ValueError: The weights belong to another architecture; the message names each differing argument.
        FileNotFoundError: ``source`` is neither a file, a directory nor (online) a Hub name.
    """
    path = Path(source).expanduser()
    if is_gguf(source):
        loaded = _gguf_converter(type(backbone), source).gguf_load(type(backbone), source)
        spec, state = spec_of(loaded), loaded.state_dict()
    elif path.is_file():
        spec, state = _from_zoo_checkpoint(path)
        state = upgrade_state_dict(state, backbone, prefix="")  # an earlier zoo's weight names
    else:
        spec, state = _from_hf(type(backbone), backbone, source)
    _check_same_architecture(backbone, spec, str(source))
    _copy_weights(backbone, state, str(source))


def is_gguf(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a GGUF file: a path ending in ``.gguf``, or ``python:<package>`` for an
    installed package that holds ``.gguf`` files (found without importing the package)."""
    text = str(source)
    if text.startswith(PACKAGE_PREFIX):
        import importlib.util

        spec = importlib.util.find_spec(text[len(PACKAGE_PREFIX) :])
        places = spec.submodule_search_locations if spec is not None else None
        return bool(places) and any(next(Path(d).glob("*.gguf"), None) for d in places)
    return text.lower().endswith(".gguf")


def _gguf_converter(cls: type, source: str | os.PathLike) -> Converter:
    found = converter(cls)
    if found is None or found.gguf_load is None or found.gguf_architecture is None:
        raise ValueError(f"{source}: {cls.__name__} cannot read GGUF files (only Llama has a GGUF reader)")
    return found


def source_architecture(cls: type, source: str | os.PathLike) -> dict[str, Any]:
    """The constructor arguments of the ``cls`` model that ``source`` holds, read without loading a
    weight: a GGUF file's metadata, a Hugging Face directory's ``config.json`` (the family's converter) or
    a zoo checkpoint's recorded backbone.

    Raises:
        ValueError: ``source`` holds another model class, or ``cls``'s family cannot read that format.
        FileNotFoundError: No such file, directory or package.
    """
    if is_gguf(source):
        return dict(_gguf_converter(cls, source).gguf_architecture(source))
    path = Path(source).expanduser()
    if path.is_file():
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated zip, pickled objects, not a checkpoint at all
            raise ValueError(f"{path}: not a loadable zoo checkpoint ({str(err)[:200]})") from err
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        spec = (hparams or {}).get("backbone")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError(f"{path}: the checkpoint records no backbone architecture")
        theirs = import_class(spec["class_path"])
        if not issubclass(theirs, cls) and not issubclass(cls, theirs):
            raise ValueError(f"{path} holds a {spec['class_path']}, not a {cls.__qualname__}")
        return dict(spec.get("init_args") or {})
    found = converter(cls)
    if found is None or found.architecture is None:
        raise ValueError(f"{cls.__name__} cannot read the architecture of Hugging Face models")
    return dict(found.architecture(source))


def fill_architecture(cls: type, init_args: dict[str, Any], source: str | os.PathLike) -> list[str]:
    """Write the architecture of the model ``source`` holds (`source_architecture`) into ``init_args``,
    the backbone's arguments as a config gives them, in place: an argument left out, ``None`` or at the
    class's default takes the source's value; one set to a third value is an error, so a recipe never
    silently trains another shape than its weights. How the weights are used (dropout, LoRA, ...) stays
    the config's. A Hugging Face source of a family without an architecture reader (BERT2BERT's, built
    from a BERT) fills nothing: loading checks the weights. Returns the names it filled.

    Raises:
        ValueError: An argument that contradicts the source (the message names each and both values).
    """
    found = converter(cls)
    hf_dir = not is_gguf(source) and not Path(source).expanduser().is_file()
    if hf_dir and (found is None or found.architecture is None):
        return []
    params = inspect.signature(cls).parameters
    filled, differ = [], []
    for name, theirs in source_architecture(cls, source).items():
        if name in _FREE_ARGS or name not in params:
            continue
        default = params[name].default
        ours = init_args.get(name, default)
        if ours is None or ours is inspect.Parameter.empty or ours == default:
            if ours != theirs:
                init_args[name] = theirs
                filled.append(name)
        elif ours != theirs:
            differ.append(f"{name}={ours!r} ({source}: {theirs!r})")
    if differ:
        raise ValueError(
            f"the backbone's init_args contradict the pretrained {source}: {', '.join(differ)}; "
            "leave them out to take the pretrained values"
        )
    return filled


def _from_zoo_checkpoint(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickled objects, not a checkpoint at all
        raise ValueError(f"{path}: not a loadable zoo checkpoint ({str(err)[:200]})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    spec = checkpoint.get("hyper_parameters", {}).get("backbone")
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: the checkpoint holds no 'backbone.*' weights; it is not a zoo task's")
    return spec, state


def _from_hf(cls: type, backbone: nn.Module, source: str | os.PathLike) -> tuple[dict[str, Any] | None, dict]:
    found = converter(cls)
    if found is None:
        raise ValueError(f"{cls.__name__} cannot read Hugging Face checkpoints (no converter is registered)")
    own = (spec_of(backbone) or {}).get("init_args", {})
    # how the weights are read (a Bert's pretraining heads, a BERT2BERT's cross-attention): the backbone's
    kwargs = {name: own[name] for name in found.load_args if name in own}
    loaded = found.load(cls, source, **kwargs)
    return spec_of(loaded), loaded.state_dict()


def _architecture(spec: dict[str, Any]) -> dict[str, Any]:
    args = dict(spec.get("init_args", {}))
    if args.get("hidden_dim") is None and "embed_dim" in args:
        args["hidden_dim"] = 4 * args["embed_dim"]  # the models' own default, spelled out
    return {k: v for k, v in args.items() if k not in _FREE_ARGS}


def _check_same_architecture(backbone: nn.Module, theirs: dict[str, Any] | None, source: str) -> None:
    ours = spec_of(backbone)
    if ours is None or theirs is None:
        return  # nothing recorded to compare: the weight shapes are checked when copying
    if import_class(theirs["class_path"]) is not type(backbone) and not isinstance(
        backbone, import_class(theirs["class_path"])
    ):
        raise ValueError(
            f"{source} holds a {theirs['class_path']} but the backbone is a {type(backbone).__qualname__}"
        )
    a, b = _architecture(ours), _architecture(theirs)
    differ = [
        f"{k}={a.get(k)!r} (pretrained: {b.get(k)!r})"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]
    if differ:
        raise ValueError(
            f"the backbone does not match the pretrained weights in {source}: "
            + ", ".join(differ)
            + "; set these init_args of the backbone to the pretrained values"
        )


def _copy_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = backbone.state_dict()
    unexpected = [k for k in state if k not in own and not k.startswith(_OPTIONAL_PREFIXES)]
    missing = [k for k in own if k not in state]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if unexpected or missing or shapes:
        raise ValueError(
            f"{source} does not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
