"""Initialise an already built backbone from pretrained weights: a Hugging Face directory (or Hub name)
or a checkpoint written by a zoo task.

Fine-tuning recipes spell out the backbone's architecture in YAML (so that the CLI validates it and the
checkpoint can rebuild it) and name the weights to start from. This module checks that the two agree,
naming every argument that differs, before copying a single tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.checkpoint import upgrade_state_dict
from zoo.models.hf_io import converter
from zoo.models.spec import import_class, spec_of

# Arguments that change no tensor shape or meaning of a weight: fine-tuning may choose them freely.
_FREE_ARGS = {"dropout", "attention_dropout", "with_pretraining_heads", "cross_attention_init"}
# Parts a pretraining checkpoint has and a fine-tuning backbone may leave out.
_OPTIONAL_PREFIXES = ("mlm_head.", "nsp_head.", "lm_head.")


def load_pretrained(backbone: nn.Module, source: str | os.PathLike) -> None:
    """Copy pretrained weights into ``backbone`` in place.

    Args:
        backbone: A zoo model (``Bert``, ``GPT2``, ...) built with the architecture of the weights.
        source: A zoo ``.ckpt`` file (its ``backbone.*`` weights are used), a Hugging Face model directory,
            or a Hub name (needs ``huggingface_hub`` and network).

    Raises:
        ValueError: The weights belong to another architecture; the message names each differing argument.
        FileNotFoundError: ``source`` is neither a file, a directory nor (online) a Hub name.
    """
    path = Path(source).expanduser()
    if path.is_file():
        spec, state = _from_zoo_checkpoint(path)
        state = upgrade_state_dict(state, backbone, prefix="")  # an earlier zoo's weight names
    else:
        spec, state = _from_hf(type(backbone), backbone, source)
    _check_same_architecture(backbone, spec, str(source))
    _copy_weights(backbone, state, str(source))


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
