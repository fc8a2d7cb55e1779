"""Normalisation layers that ``torch.nn`` lacks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.errors import check_positive


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``weight * x / sqrt(mean(x²) + eps)``, no centring and
    no bias. Computed in float32 whatever the input dtype, then cast back before the weight is applied, as
    Hugging Face's ``LlamaRMSNorm`` does (``torch.nn.RMSNorm`` computes in the input dtype).

    Args:
        embed_dim: Normalised width C.
        eps: Added to the mean square.
    """

    def __init__(self, embed_dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("RMSNorm", embed_dim=embed_dim)
        if not eps > 0:
            raise ValueError(f"RMSNorm: eps must be positive, got {eps!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(embed_dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
