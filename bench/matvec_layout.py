"""One-token (batch 1) linear layers in the two weight layouts, on CPU: why decoding speed depends on it.

    python bench/matvec_layout.py

A decoding step multiplies one activation row by every weight matrix. ``nn.Linear`` (zoo) stores a
weight as ``[out, in]`` and computes ``x @ W.T``; GPT-2's ``Conv1D`` (transformers) stores ``[in, out]``
and computes ``x @ W``. Both give the same numbers; this script times them for GPT-2 small's shapes.
Several copies of each matrix are cycled so that, as in a real model, the weights come from memory
rather than from the cache.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [
    (768, 2304, "attention qkv"),
    (768, 3072, "MLP in"),
    (3072, 768, "MLP out"),
    (768, 50257, "output layer"),
]


def seconds_per_call(fn, matrices: list[torch.Tensor], calls: int) -> float:
    for w in matrices[:3]:
        fn(w)
    start = time.perf_counter()
    for i in range(calls):
        fn(matrices[i % len(matrices)])
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--megabytes", type=int, default=128, help="weights cycled per shape (beyond L3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch 1")
    header = ("layer", "in x out", "[out, in] (nn.Linear)", "[in, out] (Conv1D)", "ratio")
    print(f"{header[0]:14s} {header[1]:>12s} {header[2]:>22s} {header[3]:>20s} {header[4]:>6s}")
    for d_in, d_out, name in SHAPES:
        copies = max(1, args.megabytes * 2**20 // (d_in * d_out * 4))
        out_in = [torch.randn(d_out, d_in) for _ in range(copies)]
        in_out = [w.t().contiguous() for w in out_in]
        x, b = torch.randn(1, d_in), torch.randn(d_out)
        calls = max(20, 2000 // copies)
        linear = seconds_per_call(lambda w, x=x, b=b: F.linear(x, w, b), out_in, calls)
        conv1d = seconds_per_call(lambda w, x=x, b=b: torch.addmm(b, x, w), in_out, calls)
        print(
            f"{name:14s} {f'{d_in}x{d_out}':>12s} {linear * 1e6:19,.0f} us {conv1d * 1e6:17,.0f} us "
            f"{linear / conv1d:5.2f}x"
        )


if __name__ == "__main__":
    main()
