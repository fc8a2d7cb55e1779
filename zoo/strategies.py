"""Trainer strategies that know zoo's models: ``strategy: fsdp`` in a recipe means `FSDP` below.

FSDP needs to know which submodules to shard as one unit (and, with activation checkpointing, which to
recompute). That is a fact about the network, so each backbone declares it once, as the class attribute
``fsdp_units`` (GPT-2: ``(PreNormBlock,)``), instead of every recipe repeating an ``auto_wrap_policy``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


class FSDP(FSDPStrategy):
    """Lightning's `FSDPStrategy` that wraps each unit the model declares, e.g. every Transformer block.

    At setup, just before the model is wrapped, the LightningModule's ``backbone`` (or the module itself)
    is asked for ``fsdp_units``, a tuple of module classes; each submodule of those classes becomes one
    FSDP unit (``ModuleWrapPolicy``) and, with ``activation_checkpointing=True``, has its activations
    recomputed in the backward pass. A model without the attribute is wrapped whole, as one unit, with a
    warning. An ``auto_wrap_policy`` or ``activation_checkpointing_policy`` passed explicitly wins.

    Args:
        activation_checkpointing: Recompute the activations of each declared unit in the backward pass
            (less memory, about one more forward pass of compute).
        **kwargs: `FSDPStrategy`'s own arguments (``sharding_strategy``, ``state_dict_type``,
            ``cpu_offload``, ``auto_wrap_policy``, ``activation_checkpointing_policy``, ...).
    """

    def __init__(self, *, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        if not isinstance(activation_checkpointing, bool):
            raise TypeError(
                "activation_checkpointing is a bool here; to choose the layers yourself pass "
                "activation_checkpointing_policy={LayerClass, ...}"
            )
        super().__init__(**kwargs)
        self.activation_checkpointing = activation_checkpointing
        # what the user chose explicitly; re-read on every setup (fit, then test, rewraps the model)
        self._explicit_wrap_policy = self.kwargs.get("auto_wrap_policy") is not None
        self._explicit_checkpointing = bool(self._activation_checkpointing_kwargs)

    def setup(self, trainer: L.Trainer) -> None:
        """Derive the policies from the model's declaration, then let `FSDPStrategy` wrap the model."""
        units = declared_fsdp_units(self.lightning_module)
        if not self._explicit_wrap_policy:
            if units:
                self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(set(units))
            else:
                self.kwargs.pop("auto_wrap_policy", None)
                rank_zero_warn(
                    f"{_owner_name(self.lightning_module)} declares no `fsdp_units`: FSDP wraps the whole "
                    "model as one unit, so every rank gathers all parameters at once. Set the class "
                    "attribute `fsdp_units = (YourBlock,)` on the backbone to shard block by block."
                )
        if self.activation_checkpointing and not self._explicit_checkpointing:
            if not units:
                raise ValueError(
                    f"activation_checkpointing=True needs the layers to recompute, but "
                    f"{_owner_name(self.lightning_module)} declares no `fsdp_units`; set the class "
                    "attribute `fsdp_units = (YourBlock,)` on the backbone, or pass "
                    "activation_checkpointing_policy={YourBlock}"
                )
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(set(units))}
        super().setup(trainer)


def declared_fsdp_units(module: nn.Module) -> tuple[type[nn.Module], ...]:
    """The module classes ``module.backbone`` (or else ``module``) declares as ``fsdp_units``; ``()``
    when neither declares any. Raises `TypeError` for a declaration that is not module classes, and
    warns when the model contains none of the declared classes."""
    owner = _owner(module)
    units = tuple(getattr(owner, "fsdp_units", ()) or ())
    if not all(isinstance(u, type) and issubclass(u, nn.Module) for u in units):
        raise TypeError(
            f"{type(owner).__name__}.fsdp_units must be a tuple of nn.Module classes, got {units!r}"
        )
    if units and not any(isinstance(m, units) for m in owner.modules()):
        rank_zero_warn(
            f"{type(owner).__name__}.fsdp_units = {tuple(u.__name__ for u in units)} but the model contains "
            "no such module: FSDP wraps it whole."
        )
    return units


def _owner(module: nn.Module) -> nn.Module:
    backbone = getattr(module, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) and hasattr(backbone, "fsdp_units") else module


def _owner_name(module: nn.Module) -> str:
    backbone = getattr(module, "backbone", None)
    return type(backbone if isinstance(backbone, nn.Module) else module).__name__
