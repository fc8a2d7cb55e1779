"""Low-rank adapters (LoRA, Hu et al. 2021) on chosen linear layers of any module.

`apply_lora` swaps each ``nn.Linear`` whose qualified name matches one of the ``targets`` (``fnmatch``
patterns such as ``"*.self_attn.qkv_proj"`` or ``"*.mlp.*"``) for a `LoRALinear` and freezes everything
else in the module: ``y = W x + b + (alpha / rank) · B A dropout(x)``, with A (r, in) and B (out, r) the
only trainable weights. B starts at zero, so a fresh adapter changes nothing. A `LoRALinear` is an
``nn.Linear`` that keeps the base layer's ``weight`` and ``bias`` parameters under their names, so the
base weights load, save and convert as before; the adapter adds ``lora_A`` and ``lora_B`` beside them.
A fused projection (``qkv_proj``) gets one adapter over its whole output, which equals one adapter per
query/key/value projection with A shared and B split by rows. `merge_lora` folds the adapters back into
plain ``nn.Linear`` layers (``W + (alpha / rank) · B A``). Training without adapter dropout runs the
layer as one autograd function whose backward orders the rank-r products for the BLAS (`_LoRAProduct`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import check_non_negative, check_positive, check_probability

DEFAULT_TARGETS = ("*attn.*",)
"""Every linear layer of every attention module (self and cross; fused or separate projections)."""


@dataclass(frozen=True)
class LoRA:
    """What `apply_lora` does, as a task's ``lora`` argument takes it (``--model.init_args.lora.rank=8``).

    Args:
        rank: Rank r of each adapter.
        alpha: The adapter's output is scaled by ``alpha / rank``.
        dropout: Dropout on the adapter's input (the base layer sees the plain input).
        targets: ``fnmatch`` patterns on the backbone's qualified module names; the ``nn.Linear`` layers
            they match get adapters (others are ignored, but every pattern must match at least one).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        _check("lora", rank=self.rank, alpha=self.alpha, dropout=self.dropout)
        if not self.targets:
            raise ValueError("lora: targets must name at least one pattern")


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    Args:
        base: The layer to adapt; its ``weight`` and ``bias`` parameters are shared, not copied.
        rank: Rank r of the update.
        alpha: Scale numerator: the update is multiplied by ``alpha / rank``.
        dropout: Dropout probability on the update's input.

    Shapes: input (..., in_features), output (..., out_features); ``lora_A`` (r, in), ``lora_B`` (out, r).
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        _check(type(self).__name__, rank=rank, alpha=alpha, dropout=dropout)
        # meta: nothing allocated; the base's parameters replace these below
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, rank, **factory))
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """A as ``nn.Linear`` initialises its weights (Kaiming uniform), B zero: the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def reset_parameters(self) -> None:
        if hasattr(self, "lora_A"):  # nn.Linear's constructor calls this before the adapter exists
            super().reset_parameters()
            self.reset_adapter()

    def forward(self, x: Tensor) -> Tensor:
        if (
            (self.training and self.dropout.p > 0)  # the adapter reads a different input than the base
            or torch.is_autocast_enabled(x.device.type)  # autograd casts each product for autocast
            or torch.compiler.is_compiling()  # the compiler plans its own kernels
        ):
            update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
            return F.linear(x, self.weight, self.bias) + update * self.scale
        return _LoRAProduct.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)

    def delta_weight(self) -> Tensor:
        """The update as a matrix, ``(alpha / rank) · B A``: (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (dropout aside)."""
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, **factory)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.requires_grad_(self.weight.requires_grad)
        return linear

    def base_layer(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's ``weight`` and ``bias`` (no adapter)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


class _LoRAProduct(torch.autograd.Function):
    """``x Wᵀ + b + s · (x Aᵀ) Bᵀ`` with a backward that lays out the rank-r products for the BLAS.

    Autograd differentiates the two rank-r products as ``grad_y @ B`` and ``grad_yᵀ @ (x Aᵀ)``, and with
    an output of r columns those run two to five times slower on a CPU than the same products written
    as ``grad_y @ (Bᵀ contiguous)ᵀ`` and ``((x Aᵀ)ᵀ @ grad_y)ᵀ`` (measured on one core; a LoRA step of
    MiniLM spent 14% of its time there). The update is added into the base product in place (one
    ``addmm``) instead of a scale and an add over the whole output. Gradients are computed only for the
    inputs that need them: with the base frozen, none for ``W`` and ``b``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale):  # noqa: ANN001, ANN205
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        low = rows @ lora_A.t()  # (N, r)
        out = rows @ weight.t() if bias is None else torch.addmm(bias, rows, weight.t())
        out.addmm_(low, lora_B.t(), alpha=scale)  # (N, out)
        ctx.save_for_backward(rows, weight, lora_A, lora_B, low)
        ctx.scale, ctx.has_bias = scale, bias is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        rows, weight, lora_A, lora_B, low = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_b_lora = ctx.needs_input_grad[:5]
        grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x or need_a:
            grad_low = grad @ lora_B.t().contiguous().t()  # (N, r), scaled below
            if need_a:
                grad_a = (grad_low.t() @ rows).mul_(ctx.scale)  # (r, in)
            if need_x:
                grad_x = (grad @ weight).addmm_(grad_low, lora_A, alpha=ctx.scale)
                grad_x = grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1])
        if need_b_lora:
            grad_b = (low.t() @ grad).t().mul_(ctx.scale)  # (out, r)
        if need_w:
            grad_w = grad.t() @ rows
        if need_b and ctx.has_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def apply_lora(
    module: nn.Module, *, targets: list[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Give the ``nn.Linear`` layers of ``module`` that match ``targets`` adapters; freeze the rest.

    Args:
        module: The network, changed in place: afterwards only its ``lora_A`` / ``lora_B`` train.
        targets: ``fnmatch`` patterns on qualified module names (relative to ``module``).
        rank: Rank of each adapter.
        alpha: Each update is scaled by ``alpha / rank``.
        dropout: Dropout on each adapter's input.

    Returns:
        The qualified names of the adapted layers.

    Raises:
        ValueError: A pattern that matches no linear layer (the message lists some that exist), a layer
            already adapted, a matched layer whose weight is shared with another module (tied), or a
            rank, alpha or dropout out of range.
    """
    linears = {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear) and name}
    if any(isinstance(m, LoRALinear) for m in linears.values()):
        raise ValueError(f"{type(module).__name__} already has LoRA adapters")
    for pattern in targets:
        if not any(fnmatchcase(name, pattern) for name in linears):
            some = ", ".join(list(linears)[:6])
            raise ValueError(
                f"lora.targets: {pattern!r} matches no linear layer of {type(module).__name__} "
                f"(its linear layers are named like: {some}, ...)"
            )
    chosen = [name for name in linears if any(fnmatchcase(name, p) for p in targets)]
    users: dict[int, int] = {}
    for m in module.modules():
        for p in m.parameters(recurse=False):
            users[id(p)] = users.get(id(p), 0) + 1
    for name in chosen:
        if users[id(linears[name].weight)] > 1:
            raise ValueError(
                f"lora.targets: {name} shares its weight with another module (tied weights); leave it out"
            )
    module.requires_grad_(False)
    for name in chosen:
        layer = LoRALinear(linears[name], rank=rank, alpha=alpha, dropout=dropout)
        _replace(module, name, layer.train(linears[name].training))
    return chosen


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` in ``module`` by its merged plain ``nn.Linear``, in place; returns it."""
    for name, layer in _adapted(module):
        _replace(module, name, layer.merged())
    return module


def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of ``module`` by qualified name."""
    return dict(_adapted(module))


@contextlib.contextmanager
def base_layers(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module`` holds plain ``nn.Linear`` layers sharing the adapted layers' weights,
    so its ``state_dict`` and ``load_state_dict`` are those of the network without adapters (loading
    pretrained weights into a model that already has its adapters)."""
    adapted = _adapted(module)
    for name, layer in adapted:
        _replace(module, name, layer.base_layer())
    try:
        yield module
    finally:
        for name, layer in adapted:
            _replace(module, name, layer)


def _check(owner: str, *, rank: int, alpha: float, dropout: float) -> None:
    check_positive(owner, rank=rank)
    check_non_negative(owner, alpha=alpha)
    if alpha == 0:
        raise ValueError(f"{owner}: alpha must be > 0, got {alpha!r}")
    check_probability(owner, dropout=dropout)


def _adapted(module: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoRALinear)]


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
