"""Trainer strategies that know zoo's models: ``strategy: fsdp`` in a recipe means `FSDP` below.

FSDP needs to know which submodules to shard as one unit (and, with activation checkpointing, which to
recompute). That is a fact about the network, so each backbone declares it once, as the class attribute
``fsdp_units`` (GPT-2: ``(PreNormBlock,)``), instead of every recipe repeating an ``auto_wrap_policy``.
The same units are what a task's ``compile`` and ``activation_checkpointing`` act on without FSDP
(`configure_blocks`, called by ``zoo.tasks.base.BackboneTask.configure_model``).
"""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.utils.checkpoint import checkpoint

from zoo.nn import KVCache


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


def configure_blocks(
    module: nn.Module,
    *,
    compile: bool,
    activation_checkpointing: bool,
    compile_kwargs: dict[str, Any],
    strategy: Strategy | None = None,
) -> None:
    """Give each block of the ``fsdp_units`` that ``module`` declares (`declared_fsdp_units`) a
    `BlockForward` that compiles and/or recomputes it; with neither wanted, remove any installed one. A
    block already set up the same way is left alone.

    Args:
        module: A LightningModule with a ``backbone`` (or the model itself).
        compile: Compile each block's forward (``torch.compile(**compile_kwargs)``).
        activation_checkpointing: Recompute each block's activations in the backward pass.
        compile_kwargs: Keyword arguments of ``torch.compile``.
        strategy: The trainer's strategy, if any: activation checkpointing must not be asked of both.

    Raises:
        ValueError: Blocks wanted but none declared (the message says how to declare them), or activation
            checkpointing asked of both the model and the FSDP strategy.
    """
    wanted = compile or activation_checkpointing
    units = declared_fsdp_units(module) if wanted else ()
    if wanted and not units:
        raise ValueError(
            f"compile and activation_checkpointing act on the blocks a backbone declares as "
            f"`fsdp_units`, and {_owner_name(module)} declares none; set the class attribute "
            "`fsdp_units = (YourBlock,)` on it"
        )
    strategy_recomputes = getattr(strategy, "activation_checkpointing", False) is True or bool(
        getattr(strategy, "_activation_checkpointing_kwargs", None)  # Lightning's own FSDPStrategy
    )
    if activation_checkpointing and strategy_recomputes:
        raise ValueError(
            "activation_checkpointing is on in both the model and the FSDP strategy; turn one off"
        )
    settings = (compile, activation_checkpointing, dict(compile_kwargs))
    for block in getattr(module, "backbone", module).modules():
        current = block.__dict__.get("forward")
        installed = isinstance(current, BlockForward)
        if installed and not wanted:
            del block.forward
        elif units and isinstance(block, units) and not (installed and current.settings == settings):
            block.forward = BlockForward(
                block, compile=compile, checkpoint=activation_checkpointing, compile_kwargs=compile_kwargs
            )


class BlockForward:
    """A block's ``forward`` with activation checkpointing and/or ``torch.compile``.

    Installed as the instance attribute ``block.forward``, so the block keeps its class (which FSDP's wrap
    policy matches), its parameter names and its ``state_dict``; a copy of the model calls its own block.
    Calls that pass a `zoo.nn.KVCache` (incremental decoding, whose shapes change at every step) run the
    plain forward.

    Args:
        block: The module whose forward this becomes.
        compile: Compile the forward with ``torch.compile(**compile_kwargs)``.
        checkpoint: Recompute the block's activations in the backward pass (when gradients are on).
        compile_kwargs: Keyword arguments of ``torch.compile``.
    """

    def __init__(
        self, block: nn.Module, *, compile: bool, checkpoint: bool, compile_kwargs: dict[str, Any]
    ) -> None:
        self.block = block
        self.settings = (compile, checkpoint, dict(compile_kwargs))
        forward = type(block).forward  # unbound: compiled once, shared by blocks of one class
        if checkpoint:
            forward = functools.partial(_checkpointed, forward)
        self.fast = torch.compile(forward, **compile_kwargs) if compile else forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(v, KVCache) for v in kwargs.values()):
            return type(self.block).forward(self.block, *args, **kwargs)
        return self.fast(self.block, *args, **kwargs)


def _checkpointed(forward: Any, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(block, *args, **kwargs)
    return checkpoint(forward, block, *args, use_reentrant=False, **kwargs)
