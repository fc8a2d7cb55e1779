"""Greedy decoding speed of zoo's GPT-2 against Hugging Face transformers, on identical weights, on CPU.

    python bench/generate.py                 # 6 layers, 6 heads, 384 wide, vocab 8192 (as train_throughput)
    python bench/generate.py --size gpt2     # GPT-2 small's shape (124M), random weights
    python bench/generate.py --size char     # the shakespeare-char recipe's shape (0.8M)

One prompt of ``--prompt`` random tokens (batch 1) is continued by ``--new`` tokens, greedily, with a KV
cache on both sides: zoo's `zoo.tasks.decoding.generate` (``temperature=0``) and transformers'
``GPT2LMHeadModel.generate(do_sample=False, use_cache=True)``. The transformers model is loaded from the
directory zoo's ``GPT2.to_hf`` writes, so the weights are the same; the script checks that both sides
produce the same tokens and exits non-zero when they do not. After a warm-up the two sides alternate for
``--rounds`` rounds, so drifting machine load hits both alike; tokens/s counts the new tokens only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoo.models.gpt2 import GPT2
from zoo.tasks.decoding import generate

SIZES = {
    "char": dict(vocab_size=66, embed_dim=128, num_layers=4, num_heads=4, hidden_dim=512),
    "bench": dict(vocab_size=8192, embed_dim=384, num_layers=6, num_heads=6, hidden_dim=1536),
    "gpt2": dict(vocab_size=50257, embed_dim=768, num_layers=12, num_heads=12, hidden_dim=3072),
}


def build(size: str, workdir: Path) -> tuple[GPT2, torch.nn.Module]:
    """zoo's GPT2 (seeded random init) and the transformers model loaded from its ``to_hf`` export."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT2(max_seq_len=1024, dropout=0.0, **SIZES[size]).eval()
    theirs = GPT2LMHeadModel.from_pretrained(ours.to_hf(workdir / "hf")).eval()
    return ours, theirs


def sides(
    ours: GPT2, theirs: torch.nn.Module, prompts: list[list[int]], new: int
) -> dict[str, Callable[[], list[list[int]]]]:
    """Greedy decoding of ``prompts`` (equal lengths, so neither side pads) by each side, on the device of
    its model; each returns the new tokens of every prompt."""
    from transformers import GenerationConfig

    ids = torch.tensor(prompts, device=next(theirs.parameters()).device)
    config = GenerationConfig(
        max_new_tokens=new,
        min_new_tokens=new,  # no early stop: both sides decode exactly `new` tokens
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
    )

    def zoo_side() -> list[list[int]]:
        return generate(ours, prompts, max_new_tokens=new, temperature=0.0)

    @torch.inference_mode()
    def hf_side() -> list[list[int]]:
        out = theirs.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return out[:, ids.shape[1] :].tolist()

    return {"zoo generate": zoo_side, "transformers generate": hf_side}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first new token where two continuations differ (or where the shorter ends)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed generations per side")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = build(args.size, Path(tmp))
    prompt = torch.randint(
        0, SIZES[args.size]["vocab_size"], (args.prompt,), generator=torch.Generator().manual_seed(1)
    )
    runs = sides(ours, theirs, [prompt.tolist()], args.new)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__} "
        f"(attention: {theirs.config._attn_implementation}), {args.threads} threads, fp32, "
        f"size {args.size} {SIZES[args.size]} ({ours.num_parameters() / 1e6:.1f}M parameters), "
        f"batch 1, prompt {args.prompt}, {args.new} new tokens, greedy"
    )
    outputs = {name: run() for name, run in runs.items()}
    for _ in range(args.warmup - 1):
        for run in runs.values():
            run()
    (a_name, (a,)), (b_name, (b,)) = outputs.items()
    mismatch = first_difference(a, b)
    if mismatch is not None:
        print(f"MISMATCH: the two sides' tokens differ from new token {mismatch} on")
        return 1
    print(f"same tokens: yes ({len(a)} new tokens identical)")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
        print(
            f"round {r + 1}: " + ", ".join(f"{n}: {args.new / s[-1]:,.0f} tok/s" for n, s in seconds.items())
        )
    rates = {name: args.new * len(s) / sum(s) for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:24s} {rate:10,.0f} new tokens/s")
    per_round = [theirs_s / ours_s for ours_s, theirs_s in zip(*seconds.values())]
    print(
        f"ratio zoo/transformers: {rates[a_name] / rates[b_name]:.2f}x "
        f"(per round: median {statistics.median(per_round):.2f}x, "
        f"min {min(per_round):.2f}x, max {max(per_round):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
