"""The memory order of linear weights: ``nn.Linear``'s own ``[out, in]``, or ``[in, out]`` for decoding.

Decoding one token per sequence multiplies one activation row by every weight matrix, so each step
streams all the weights from memory, and its speed is the rate at which the BLAS's one-row kernel reads
them. That rate depends on the order of the matrix in memory. On this project's CPU (MKL on one AMD EPYC
core, fp32) matrices at least as wide as they are tall stream faster stored ``[in, out]``: SmolLM2's
output layer at 19 GB/s instead of 9.5-11, its MLP input projections at 13-16 GB/s instead of 9-10;
narrower ones (grouped-query keys and values, the MLP's output projection) are faster as they are
(`bench/decode_smollm2.py`; 1.3x faster batch-1 decoding, no gain at batch 8: see the benchmarks page).

`set_linear_layout` moves weights between the two orders in place. Nothing else changes: not a module,
not a parameter's shape (``weight`` stays (out, in), a strided view of its ``[in, out]`` storage) and not
a value, so state dicts, tied weights and adapters keep working. A product in the other order may round
differently in the last bits, which is why this is a choice made for decoding and never made for
training behind the user's back.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Layout = Literal["in_out", "out_in"]


def set_linear_layout(module: nn.Module, layout: Layout = "in_out") -> int:
    """Store the weight of every ``nn.Linear`` in ``module`` with ``out_features >= in_features`` in
    ``layout``: ``"in_out"`` (the order one-row products stream fastest on CPU, see the module's
    docstring) or ``"out_in"`` (``nn.Linear``'s own, contiguous: back to what training uses).

    A weight shared by several modules (an output layer tied to the token embedding) moves once, and
    stays shared. Returns the number of matrices moved.

    Raises:
        ValueError: An unknown ``layout``.
    """
    if layout not in ("in_out", "out_in"):
        raise ValueError(f"set_linear_layout: layout must be 'in_out' or 'out_in', got {layout!r}")
    moved, seen = 0, set()
    for linear in module.modules():
        if not isinstance(linear, nn.Linear) or linear.out_features < linear.in_features:
            continue
        weight = linear.weight
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        in_out = weight.stride() == (1, weight.shape[0])  # (out, in) viewing an [in, out] storage
        if in_out == (layout == "in_out"):
            continue
        with torch.no_grad():
            if layout == "in_out":
                weight.data = weight.data.t().contiguous().t()  # (out, in), strides (1, out)
            else:
                weight.data = weight.data.contiguous()  # (out, in), strides (in, 1)
        moved += 1
    return moved
