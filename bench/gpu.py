"""The GPU benchmark: one table of zoo against transformers, every row measured side by side in one run.

    bash bench/gpu.sh --prepare    # once, where PyPI and ../shared/data are reachable: fills .cache/gpu-kit
    bash bench/gpu.sh              # on the GPU machine; installs the kit's wheels if jsonargparse is missing
    bash bench/gpu.sh --tiny       # every row with tiny sizes, on a CPU, in about a minute

Rows:

1. GPT-2 124M training (seq 1024, batch 16, bf16-mixed), ``torch.compile`` off and on: step time, tokens/s
   and MFU. zoo runs through the Lightning Trainer (``CausalLM``, its AdamW, ``compile=True`` compiling each
   block); transformers' ``GPT2LMHeadModel`` runs a plain loop with the same AdamW (fused on CUDA, weight
   decay on matrices only, the same warm-up schedule) and ``torch.compile(model)``.
2. BERT-base MLM + NSP training (seq 128, batch 64, bf16-mixed): ``MaskedLM(Bert)`` through the Trainer
   against ``BertForPreTraining`` in the same plain loop.
3. Greedy decoding with GPT-2 124M's shape, batch 1 and 32, 16-token prompts, 128 new tokens, fp32: zoo's
   ``generate`` against transformers' ``generate`` on the same weights (``bench/generate.py``); the tokens
   must be identical.
4. The shakespeare-char recipe in bf16-mixed through ``zoo fit``: the final val loss must reach the CPU fp32
   result, 1.866, within 0.02.
5. GPT-2 training on packed documents (row 1's shape, each row cut into documents of 1/16 to 1/2 of it):
   zoo's attention on CUDA with FlexAttention's block mask (the "zoo" column) against the same model with
   SDPA and a dense block-diagonal mask (the "transformers" column; ``--rows packed``). The check: the
   flex path ran, and its fp32 loss and gradients equal the dense mask's.

MFU is the model's training FLOPs per token (``flops_per_token``: the same for both sides) times tokens/s
over the device's peak dense FLOP/s (`zoo.tasks.monitor.peak_flops`; a CPU's is measured with a timed fp32
matrix product when the script starts). The script exits 1 when a row fails or a check does not hold.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from generate import build, first_difference, sides
from torch import Tensor, nn
from torch.utils.data import DataLoader
from train_throughput import bert_batch, bert_models, gpt2_batch, gpt2_models, hf_gpt2_loss

import zoo.nn.attention
from zoo.tasks.base import BackboneTask, sdpa_backends, warmup_cosine
from zoo.tasks.monitor import measure_matmul_flops, peak_flops

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".cache" / "gpu-kit"
RECIPE = REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"
CPU_VAL_LOSS, TOLERANCE = 1.866, 0.02  # recipes/gpt2/shakespeare-char.yaml, CPU fp32, seed 1337

FULL = {
    "label": "124M",
    "gpt2": dict(
        vocab_size=50257, embed_dim=768, num_layers=12, num_heads=12, hidden_dim=3072, batch=16, seq=1024
    ),
    "bert_label": "BERT-base",
    "bert": dict(
        vocab_size=30522, embed_dim=768, num_layers=12, num_heads=12, hidden_dim=3072, batch=64, seq=128
    ),
    "generate": dict(size="gpt2", prompt=16, new=128, batches=(1, 32), rounds=3),
    "warmup": 10,
    "steps": 20,
    "recipe_args": [],
}
TINY = {
    "label": "tiny",
    "gpt2": dict(vocab_size=256, embed_dim=64, num_layers=2, num_heads=2, hidden_dim=256, batch=4, seq=64),
    "bert_label": "BERT tiny",
    "bert": dict(vocab_size=256, embed_dim=64, num_layers=2, num_heads=2, hidden_dim=256, batch=8, seq=32),
    "generate": dict(size="char", prompt=8, new=16, batches=(1, 4), rounds=2),
    "warmup": 3,
    "steps": 10,
    "recipe_args": [
        "--trainer.max_steps=20",
        "--trainer.val_check_interval=10",
        "--trainer.limit_val_batches=2",
    ],
}


@dataclass
class Row:
    name: str
    zoo: str
    theirs: str = "-"
    ratio: str = "-"
    check: str = ""
    ok: bool = True


@dataclass
class Setup:
    device: torch.device
    precision: str  # the Trainer's; the plain loops autocast to the same dtype
    peak: float | None
    sizes: dict
    tiny: bool
    workdir: Path  # scratch: exports, trainer roots, the recipe's run
    log_dir: Path  # the recipe's log and table.md

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class StepTimer(L.Callback):
    """Wall time of ``steps`` optimizer steps after the first ``warmup`` ones, the device's queue drained."""

    def __init__(self, setup: Setup, warmup: int, steps: int) -> None:
        self.setup, self.warmup, self.steps = setup, warmup, steps
        self.seconds, self._start = float("nan"), 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.warmup:
            self.setup.sync()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self.setup.sync()
            self.seconds = time.perf_counter() - self._start


def zoo_step_seconds(task: BackboneTask, batch: dict[str, Tensor], setup: Setup) -> float:
    """Seconds per optimizer step of ``task`` fitted by the Lightning Trainer on ``batch``, repeated."""
    warmup, steps = setup.sizes["warmup"], setup.sizes["steps"]
    timer = StepTimer(setup, warmup, steps)
    trainer = L.Trainer(
        accelerator=setup.device.type,
        devices=1,
        precision=setup.precision,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=setup.workdir,
        callbacks=[timer],
    )
    trainer.fit(task, DataLoader([batch] * (warmup + steps), batch_size=None))
    return timer.seconds / steps


def optimizer_settings(task: BackboneTask) -> dict:
    """What ``task.configure_optimizers`` builds its AdamW and schedule from."""
    opt, sched = task.optimizer_spec["init_args"], task.lr_scheduler_spec["init_args"]
    names = {"learning_rate": opt["lr"], "betas": tuple(opt["betas"]), "weight_decay": opt["weight_decay"]}
    return {**names, "warmup_steps": sched["warmup_steps"], "min_lr_ratio": sched["min_lr_ratio"]}


def hf_step_seconds(
    model: nn.Module, loss: Callable[[nn.Module, dict], Tensor], batch: dict, optim: dict, setup: Setup
) -> float:
    """Seconds per step of a plain loop (batch to the device, autocast forward, backward, AdamW step) with
    the AdamW and schedule a zoo task configures (``optim``: `optimizer_settings`)."""
    warmup, steps = setup.sizes["warmup"], setup.sizes["steps"]
    model.to(setup.device)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = True if setup.device.type == "cuda" else None  # as BackboneTask.configure_optimizers
    optimizer = torch.optim.AdamW(groups, lr=optim["learning_rate"], betas=optim["betas"], fused=fused)
    schedule = warmup_cosine(
        warmup_steps=optim["warmup_steps"], total_steps=warmup + steps, min_ratio=optim["min_lr_ratio"]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    dtype = torch.bfloat16 if setup.precision.startswith("bf16") else torch.float32

    def step() -> None:
        on_device = {k: v.to(setup.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(setup.device.type, dtype=dtype, enabled=dtype != torch.float32):
            value = loss(model, on_device)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    for _ in range(warmup):
        step()
    setup.sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    setup.sync()
    return (time.perf_counter() - start) / steps


def train_row(name: str, setup: Setup, family: str, compile_mode: dict | None) -> Row:
    """One training row: zoo through the Trainer, then transformers in the plain loop, on one batch;
    ``compile_mode`` (``torch.compile`` keyword arguments) compiles both, ``None`` neither."""
    c = setup.sizes[family]
    g = torch.Generator().manual_seed(0)
    batch = gpt2_batch(c, g) if family == "gpt2" else bert_batch(c, g)
    if setup.device.type == "cuda":  # pinned: the copy to the GPU does not wait for the queued steps
        batch = {k: v.pin_memory() for k, v in batch.items()}
    torch.manual_seed(0)
    ours, theirs = gpt2_models(c) if family == "gpt2" else bert_models(c)
    ours.compile_blocks = compile_mode is not None
    ours.compile_kwargs = compile_mode or {}
    flops, optim = ours.flops_per_token(c["seq"]), optimizer_settings(ours)
    zoo_seconds = zoo_step_seconds(ours, batch, setup)
    del ours
    free()
    model = torch.compile(theirs, **compile_mode) if compile_mode is not None else theirs
    loss = hf_gpt2_loss if family == "gpt2" else (lambda hf, b: hf(**b).loss)
    hf_seconds = hf_step_seconds(model, loss, batch, optim, setup)
    del model, theirs
    free()
    return Row(name, *train_cells(zoo_seconds, hf_seconds, c["batch"] * c["seq"], flops, setup.peak))


def train_cells(zoo_s: float, hf_s: float, tokens: int, flops_per_token: int, peak: float | None) -> tuple:
    """``(zoo cell, transformers cell, ratio)``: ms/step, tokens/s and MFU; the ratio is zoo's speed-up."""

    def cell(seconds: float) -> str:
        rate = tokens / seconds
        mfu = f", MFU {100 * rate * flops_per_token / peak:.1f}%" if peak else ""
        return f"{1e3 * seconds:,.1f} ms/step, {rate:,.0f} tok/s{mfu}"

    return cell(zoo_s), cell(hf_s), f"{hf_s / zoo_s:.2f}x"


def training_rows(setup: Setup) -> list[Row]:
    """Rows 1 and 2."""
    sizes, precision = setup.sizes, setup.precision
    g, b = sizes["gpt2"], sizes["bert"]
    compiled = {"backend": "eager"} if setup.tiny else {}  # inductor costs ~40 s per model on a CPU
    rows = []
    for mode, label in (
        (None, "eager"),
        (compiled, "torch.compile" + (" (eager backend)" if setup.tiny else "")),
    ):
        name = f"train GPT-2 {sizes['label']}, seq {g['seq']}, batch {g['batch']}, {precision}, {label}"
        rows.append(guarded(name, lambda name=name, mode=mode: train_row(name, setup, "gpt2", mode)))
    name = f"train {sizes['bert_label']} MLM+NSP, seq {b['seq']}, batch {b['batch']}, {precision}, eager"
    rows.append(guarded(name, lambda: train_row(name, setup, "bert", None)))
    return rows


def packed_gpt2_batch(c: dict, g: torch.Generator) -> dict[str, Tensor]:
    """`gpt2_batch` with each row cut into documents of ``seq/16`` to ``seq/2`` tokens: ``document_ids``
    (B, T) and no target across a document's end (-100), as ``TextDataModule(pack_documents=True)``."""
    batch = gpt2_batch(c, g)
    B, T = batch["input_ids"].shape
    starts = torch.zeros(B, T, dtype=torch.long)
    for row in range(B):
        at = 0
        while (at := at + int(torch.randint(max(1, T // 16), max(2, T // 2), (1,), generator=g))) < T:
            starts[row, at] = 1
    document_ids = starts.cumsum(1)
    labels = batch["labels"].clone()
    labels[:, :-1][starts[:, 1:] == 1] = -100  # the last token of a document does not predict the next
    return {**batch, "labels": labels, "document_ids": document_ids}


@contextlib.contextmanager
def dense_masks(flex_calls: list[int] | None = None):
    """Within the block zoo's attention takes SDPA with a dense mask for packed rows (``flex_calls`` None),
    or keeps its choice and counts the FlexAttention block masks it builds in ``flex_calls``."""
    attention = zoo.nn.attention
    original_applies, original_mask = attention.Attention._flex_applies, attention.document_block_mask

    def counted(*args: object, **kwargs: object) -> object:
        flex_calls.append(1)
        return original_mask(*args, **kwargs)

    if flex_calls is None:
        attention.Attention._flex_applies = lambda self, q, bias: False
    else:
        attention.document_block_mask = counted
    try:
        yield
    finally:
        attention.Attention._flex_applies = original_applies
        attention.document_block_mask = original_mask


def packed_check(batch: dict[str, Tensor], setup: Setup) -> tuple[str, bool]:
    """fp32 loss and gradients of one packed batch with zoo's choice of kernel and with the dense mask."""
    c = setup.sizes["gpt2"]
    torch.manual_seed(0)
    task = gpt2_models(c)[0].to(setup.device).float()
    on_device = {k: v.to(setup.device) for k, v in batch.items()}
    results, calls = [], []
    for context in (dense_masks(calls), dense_masks()):
        task.zero_grad(set_to_none=True)
        with context:
            logits = task(on_device["input_ids"], document_ids=on_device["document_ids"])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), on_device["labels"].flatten())
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in task.parameters() if p.grad is not None])
        results.append((loss.item(), grads))
    (loss_flex, g_flex), (loss_dense, g_dense) = results
    cosine = float(nn.functional.cosine_similarity(g_flex, g_dense, dim=0))
    flex = "yes" if calls else "no (not CUDA)"
    ran = bool(calls) or setup.device.type != "cuda"
    ok = abs(loss_flex - loss_dense) < 1e-3 and cosine > 0.999 and ran
    return f"flex used: {flex}; loss {loss_flex:.4f} vs {loss_dense:.4f}, gradient cosine {cosine:.5f}", ok


def packed_row(setup: Setup) -> Row:
    """Row 5: packed documents, FlexAttention's block mask against SDPA's dense mask, zoo both sides."""
    c = setup.sizes["gpt2"]
    name = (
        f"train GPT-2 {setup.sizes['label']} on packed documents, seq {c['seq']}, batch {c['batch']}, "
        f"{setup.precision}: FlexAttention (zoo column) vs SDPA dense mask (transformers column)"
    )

    def run() -> Row:
        batch = packed_gpt2_batch(c, torch.Generator().manual_seed(0))
        check, ok = packed_check(batch, setup)
        free()
        seconds = []
        for context in (contextlib.nullcontext(), dense_masks()):
            torch.manual_seed(0)
            task = gpt2_models(c)[0]
            flops = task.flops_per_token(c["seq"])
            with context:
                seconds.append(zoo_step_seconds(task, batch, setup))
            del task
            free()
        cells = train_cells(*seconds, c["batch"] * c["seq"], flops, setup.peak)
        return Row(name, *cells, check, ok)

    return guarded(name, run)


def generation_rows(setup: Setup) -> list[Row]:
    """Row 3: greedy decoding, zoo's generate against transformers' on the same weights, tokens checked."""
    c = setup.sizes["generate"]
    torch.set_float32_matmul_precision("highest")  # fp32 on both sides: identical tokens are expected
    with tempfile.TemporaryDirectory(dir=setup.workdir) as tmp:
        ours, theirs = build(c["size"], Path(tmp))
    ours.to(setup.device)
    theirs.to(setup.device)
    rows = []
    for batch in c["batches"]:
        name = f"greedy decoding GPT-2 {setup.sizes['label']}, batch {batch}, {c['new']} new tokens, fp32"
        rows.append(
            guarded(name, lambda name=name, batch=batch: decode_row(name, ours, theirs, batch, setup))
        )
    return rows


def decode_row(name: str, ours: nn.Module, theirs: nn.Module, batch: int, setup: Setup) -> Row:
    c = setup.sizes["generate"]
    vocab = ours.vocab_size
    prompts = torch.randint(
        0, vocab, (batch, c["prompt"]), generator=torch.Generator().manual_seed(1)
    ).tolist()
    runs = sides(ours, theirs, prompts, c["new"])
    outputs = {side: run() for side, run in runs.items()}  # also the warm-up
    (zoo_out, hf_out) = outputs.values()
    differ = [(row, first_difference(a, b)) for row, (a, b) in enumerate(zip(zoo_out, hf_out))]
    differ = [(row, at) for row, at in differ if at is not None]
    seconds: dict[str, float] = dict.fromkeys(runs, 0.0)
    for r in range(c["rounds"]):  # alternating, so drifting load hits both alike
        for side in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            setup.sync()
            start = time.perf_counter()
            runs[side]()
            seconds[side] += time.perf_counter() - start
    tokens = batch * c["new"] * c["rounds"]
    zoo_rate, hf_rate = (tokens / s for s in seconds.values())
    check = (
        "same tokens: yes"
        if not differ
        else f"same tokens: NO (row {differ[0][0]} from token {differ[0][1]})"
    )
    return Row(
        name,
        f"{zoo_rate:,.0f} new tok/s",
        f"{hf_rate:,.0f} new tok/s",
        f"{zoo_rate / hf_rate:.2f}x",
        check,
        not differ,
    )


def recipe_row(setup: Setup, text: Path | None) -> Row:
    """Row 4: the shakespeare-char recipe through `zoo fit` in a fresh process, its final val loss."""
    steps = "20 steps (--tiny)" if setup.tiny else "2000 steps"
    name = f"recipe shakespeare-char, {setup.precision}, {steps}"
    if text is None or not text.is_file():
        return Row(name, f"error: no tinyshakespeare text (looked for {text}); see --shakespeare", ok=False)
    run_dir = Path(tempfile.mkdtemp(prefix="recipe-", dir=setup.workdir))
    command = [
        sys.executable, "-m", "zoo.cli", "fit", "--config", str(RECIPE),
        f"--trainer.precision={setup.precision}", f"--data.init_args.files=[{text.resolve()}]",
        *setup.sizes["recipe_args"],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=420)
    seconds = time.perf_counter() - start
    (setup.log_dir / "recipe.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return Row(name, f"error: zoo fit exited {proc.returncode}: {proc.stderr.strip()[-300:]}", ok=False)
    loss = final_val_loss(run_dir, proc.stdout)
    if loss is None:
        return Row(name, "error: no val_loss in the run's metrics.csv or output", ok=False)
    cell = f"val loss {loss:.3f} in {seconds:.0f} s"
    if setup.tiny:
        return Row(name, cell, check="val loss vs 1.866: not checked (--tiny)")
    ok = loss <= CPU_VAL_LOSS + TOLERANCE
    return Row(
        name, cell, check=f"<= {CPU_VAL_LOSS} + {TOLERANCE} (CPU fp32): {'yes' if ok else 'NO'}", ok=ok
    )


def final_val_loss(run_dir: Path, stdout: str) -> float | None:
    """The last val_loss the run logged: from a CSV logger's metrics.csv, else the progress lines."""
    for metrics in sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True):
        values = [row["val_loss"] for row in csv.DictReader(metrics.open()) if row.get("val_loss")]
        if values:
            return float(values[-1])
    found = re.findall(r"val_loss[ =:]+(\d+\.\d+)", stdout)
    return float(found[-1]) if found else None


def guarded(name: str, run: Callable[[], Row]) -> Row:
    """``run()``, or a row naming the error (traceback on stderr): one failing row keeps the table."""
    try:
        row = run()
    except Exception as err:  # noqa: BLE001 - every other row still runs
        traceback.print_exc()
        row = Row(name, f"error: {type(err).__name__}: {str(err)[:200]}", ok=False)
        free()  # what the failed row held (an out-of-memory, say) must not sink the next one
    print(f"  done: {row.name}: {row.zoo} | {row.theirs} | {row.ratio} | {row.check}", flush=True)
    return row


def free() -> None:
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(rows: list[Row]) -> str:
    lines = ["| row | zoo | transformers | zoo speed-up | check |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {r.name} | {r.zoo} | {r.theirs} | {r.ratio} | {r.check} |" for r in rows]
    return "\n".join(lines)


def make_setup(args: argparse.Namespace) -> Setup:
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    precision = "bf16-mixed"
    if cuda:
        torch.set_float32_matmul_precision("high")
        peak = peak_flops(device, torch.bfloat16)
        source = f"{torch.cuda.get_device_name(device)}, dense bf16 (zoo.tasks.monitor.PEAK_FLOPS)"
    else:
        peak = measure_matmul_flops("cpu", torch.float32)  # this machine, now: not a datasheet figure
        source = f"CPU, measured fp32 1024x1024 matmul, {torch.get_num_threads()} threads"
    print(f"device: {source}; peak {peak / 1e12 if peak else float('nan'):.3f} TFLOP/s for MFU")
    workdir = Path(tempfile.mkdtemp(prefix="zoo-gpu-bench-"))
    log_dir = args.log_dir or workdir
    log_dir.mkdir(parents=True, exist_ok=True)
    return Setup(device, precision, peak, TINY if args.tiny else FULL, args.tiny, workdir, log_dir)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes on the CPU: checks the script, in ~1 min"
    )
    parser.add_argument(
        "--rows", default="train,generate,recipe,packed", help="comma-separated subset to run"
    )
    parser.add_argument("--shakespeare", type=Path, default=None, help="tinyshakespeare input.txt")
    parser.add_argument("--log-dir", type=Path, default=None, help="where recipe.log and table.md go")
    args = parser.parse_args()
    import lightning
    import transformers

    versions = (torch, lightning, transformers)
    print(", ".join(f"{module.__name__} {module.__version__}" for module in versions))
    setup = make_setup(args)
    print(f"attention (scaled_dot_product_attention): {sdpa_backends(setup.device)}", flush=True)
    wanted = set(args.rows.split(","))
    rows: list[Row] = []
    if "train" in wanted:
        rows += training_rows(setup)
    if "generate" in wanted:
        rows += generation_rows(setup)
    if "recipe" in wanted:
        text = args.shakespeare or default_text()
        rows.append(guarded("recipe shakespeare-char", lambda: recipe_row(setup, text)))
    if "packed" in wanted:
        rows.append(packed_row(setup))
    print()
    print(table(rows))
    (setup.log_dir / "table.md").write_text(table(rows) + "\n")
    print(f"\nlogs: {setup.log_dir}")
    return 0 if all(r.ok for r in rows) else 1


def default_text() -> Path | None:
    for candidate in (
        KIT / "data" / "tinyshakespeare" / "input.txt",
        REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt",
    ):
        if candidate.is_file():
            return candidate
    return None


if __name__ == "__main__":
    sys.exit(main())
