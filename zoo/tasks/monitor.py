"""Training progress as plain log lines, with throughput and model FLOPs utilisation (MFU) in the logs.

`ProgressMonitor` replaces Lightning's TQDM bar (``enable_progress_bar: true`` plus this callback): every
``every_n_steps`` optimizer steps it prints one line such as

    step 250/2000 (12%) | 3,412 tok/s | MFU 41.3% | loss 2.104 | elapsed 0:41 | ETA 4:47

and logs ``throughput/tokens_per_sec``, ``throughput/samples_per_sec``, ``throughput/tflops_per_device``
and ``throughput/mfu``. Between those steps it reads nothing back from the accelerator: tokens are summed on
the device and read once per interval.

MFU is the model's training FLOPs per second (the task's ``flops_per_token``, nanoGPT's
``6N + 12·L·H·Q·T``, times the tokens processed) over the device's peak dense FLOP/s (`peak_flops`). A
frozen weight (LoRA's base layers, frozen embeddings tied to an output layer) gets no gradient, so it
counts 4 FLOPs per token instead of 6 (`frozen_linear_weights`). An encoder-decoder whose backbone splits
its estimate (``source_flops_per_token`` and ``target_flops_per_token``, the ``encoder`` module's weights
counted per source token) is counted per side: its source tokens (``input_ids``) and its target tokens
(the scored ``labels``) differ in number: 186 and 36 word pieces on average for a DialogSum dialogue
and its summary.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks.model_summary import log as summary_log
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_human_readable_count,
)
from torch import Tensor, nn

from zoo.data.batch import IGNORE_INDEX
from zoo.errors import check_positive

# Peak dense FLOP/s of one device, from the vendors' datasheets. Datasheets print most tensor-core figures
# "with sparsity" (marked * below); the dense rate, the one a Transformer reaches, is half of those.
# "fp32" is plain FP32 (CUDA cores); "tf32" is what fp32 matrix products reach when TF32 is allowed.
# Lightning's table (lightning.fabric.utilities.throughput) serves every other GPU. It is not used for
# these: its H200 rows are the with-sparsity figures (and the name "NVIDIA H200" matches none of them),
# and its RTX 4090 bf16 entry is the non-tensor FP32 rate.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: FP32 67 TF, TF32 989 TF*, BF16 1,979 TF*
    "h100-sxm": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: FP32 67 TF, TF32 989 TF*, BF16 1,979 TF*
    "h200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe alike): FP32 19.5 TF, TF32 156 TF, BF16 312 TF
    "a100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    # NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3 TF, TF32 120 TF*, BF16 242 TF*
    "l4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    # NVIDIA A10 Tensor Core GPU datasheet: FP32 31.2 TF, TF32 62.5 TF, BF16 125 TF. The A10G is AWS's
    # variant of the A10 with no datasheet of its own; these figures are its upper bound.
    "a10g": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    # NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090: FP32 82.6 TF, TF32 tensor 82.6 TF,
    # BF16 tensor with FP32 accumulate 165.2 TF (330.4 TF*)
    "rtx-4090": {"bf16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
}
"""Peak dense FLOP/s per chip and precision (``"bf16"``, ``"tf32"``, ``"fp32"``)."""


def gpu_chip(device_name: str) -> str | None:
    """The `PEAK_FLOPS` key of a CUDA device name (``torch.cuda.get_device_name()``), or ``None``."""
    name = device_name.lower()
    if "h200" in name:
        return None if "nvl" in name else "h200"
    if "h100" in name:
        return "h100-sxm" if ("sxm" in name or "hbm3" in name) else None  # PCIe, NVL: Lightning's table
    for chip, pattern in (("a100", r"a100"), ("a10g", r"a10g"), ("rtx-4090", r"4090"), ("l4", r"\bl4\b")):
        if re.search(pattern, name):
            return chip
    return None


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak dense FLOP/s of one ``device`` computing matrix products in ``dtype``.

    GPUs: `PEAK_FLOPS`, else Lightning's table (``None`` with a warning for a GPU neither knows). CPUs:
    measured once per process with `measure_matmul_flops`, as no datasheet describes a shared CPU.
    """
    if device.type == "cpu":
        return measure_matmul_flops("cpu", dtype)
    if device.type == "cuda":
        chip = gpu_chip(torch.cuda.get_device_name(device))
        if chip is not None:
            if dtype in (torch.bfloat16, torch.float16):
                return PEAK_FLOPS[chip]["bf16"]
            tf32 = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
            return PEAK_FLOPS[chip]["tf32" if tf32 else "fp32"]
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


@functools.cache
def measure_matmul_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, *, size: int = 1024, seconds: float = 0.3
) -> float:
    """FLOP/s of repeated ``size x size`` matrix products on ``device`` for about ``seconds`` (after one
    untimed product), with the current ``torch.get_num_threads()``. Cached per process. The operands come
    from a private generator: the global RNG (dropout) draws exactly what it would without the monitor."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count == 0:
        a @ b
        sync()
        count += 1
    return 2 * size**3 * count / elapsed


def frozen_linear_weights(module: nn.Module) -> int:
    """Weights of ``module``'s linear layers that do not train: each saves the 2 FLOPs per token of its
    weight gradient (shared weights counted once)."""
    weights = {id(m.weight): m.weight for m in module.modules() if isinstance(m, nn.Linear)}
    return sum(w.numel() for w in weights.values() if not w.requires_grad)


def count_target_tokens(batch: Any) -> tuple[Tensor, int] | None:
    """``(tokens, seq_len)`` of an encoder-decoder batch's targets (its ``labels`` that are scored, a 0-dim
    device tensor), ``None`` for a batch without ``decoder_input_ids``."""
    if not (isinstance(batch, Mapping) and isinstance(batch.get("decoder_input_ids"), Tensor)):
        return None
    labels = batch.get("labels")
    if not isinstance(labels, Tensor):
        return None
    return (labels != IGNORE_INDEX).sum(), labels.shape[-1]


def count_tokens(batch: Any) -> tuple[Tensor | int | None, int, int]:
    """``(tokens, samples, seq_len)`` of a batch without reading anything back from the device.

    Tokens are the non-padding positions of ``input_ids`` (a 0-dim device tensor) when the batch has an
    ``attention_mask``, else every position (an int); ``None`` when the batch has no ``input_ids``.
    Samples: the examples of packed rows (``sequence_spans``), else the first dimension of ``input_ids`` or
    of the first tensor in the batch.
    """
    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), Tensor):
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        tokens = mask.sum() if isinstance(mask, Tensor) else ids.numel()
        spans = batch.get("sequence_spans")
        return tokens, (spans if isinstance(spans, Tensor) else ids).shape[0], ids.shape[-1]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    values = batch if isinstance(batch, list | tuple) else [batch]
    first = next((v for v in values if isinstance(v, Tensor) and v.dim() > 0), None)
    return None, (first.shape[0] if first is not None else 0), 0


class ThroughputMonitor(L.Callback):
    """Throughput and MFU in the logs every ``every_n_steps`` optimizer steps, printing nothing: what
    `ProgressMonitor` logs, for runs without a progress display (``zoo`` puts one in a ProgressMonitor's
    place when ``--trainer.enable_progress_bar false`` is given).

    Tokens per second count the non-padding ``input_ids`` of rank 0's batches times the world size
    (samples per second for batches without ``input_ids``); validation time is left out of the rate.

    Args:
        every_n_steps: Steps between throughput logs; ``None`` follows the trainer's
            ``log_every_n_steps``, so the one read-back per interval coincides with Lightning's logging.
        peak_flops: Peak FLOP/s of one device for MFU; ``None`` looks the GPU up in `PEAK_FLOPS` (or
            Lightning's table) for the trainer's precision, or measures a CPU's matrix products.
    """

    _printing = False  # ProgressMonitor prints its lines

    def __init__(self, *, every_n_steps: int | None = None, peak_flops: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, every_n_steps=every_n_steps)
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"{name}: peak_flops must be > 0, got {peak_flops!r}")
        self.every_n_steps = every_n_steps
        self.peak_flops = peak_flops
        self._enabled = self._printing
        # seq_len, or (side, seq_len) for an encoder-decoder counted per side -> tokens since the last line
        self._window: dict[int | tuple[str, int], Tensor | int] = {}
        self._per_side = False  # set in on_train_start
        self._samples = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, **kwargs, file=sys.stdout, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._every = self.every_n_steps or trainer.log_every_n_steps or 50
        self._total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        estimate = getattr(pl_module, "flops_per_token", None) or getattr(
            getattr(pl_module, "backbone", None), "flops_per_token", None
        )
        frozen = frozen_linear_weights(pl_module)
        backbone = getattr(pl_module, "backbone", None)
        sides = [getattr(backbone, f"{side}_flops_per_token", None) for side in ("source", "target")]
        encoder = getattr(backbone, "encoder", None)
        self._per_side = all(callable(f) for f in sides) and isinstance(encoder, nn.Module)
        if self._per_side:
            frozen_source = frozen_linear_weights(encoder)
            frozen_by_side = {"source": frozen_source, "target": frozen - frozen_source}
            by_side = dict(zip(("source", "target"), sides, strict=True))

        def per_token(key: int | tuple[str, int]) -> int | None:
            if isinstance(key, tuple):  # (side, seq_len)
                side, seq_len = key
                return by_side[side](seq_len) - 2 * frozen_by_side[side]
            flops = estimate(key)
            return None if flops is None else flops - 2 * frozen

        self._flops_per_token = per_token if estimate or self._per_side else None
        self._peak = self.peak_flops or peak_flops(trainer.strategy.root_device, _compute_dtype(trainer))
        self._first_step, self._last_line_step = trainer.global_step, trainer.global_step
        self._start = self._mark = time.perf_counter()
        self._paused = 0.0
        self._window, self._samples = {}, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        tokens, samples, seq_len = count_tokens(batch)
        self._samples += samples
        targets = count_target_tokens(batch) if self._per_side else None
        if tokens is not None:
            key = seq_len if targets is None else ("source", seq_len)
            self._window[key] = self._window.get(key, 0) + tokens
        if targets is not None:
            key = ("target", targets[1])
            self._window[key] = self._window.get(key, 0) + targets[0]
        step = trainer.global_step
        if step == self._last_line_step or step % self._every:
            return
        self._last_line_step = step
        rates = self._rates(trainer)
        pl_module.log_dict(
            {f"throughput/{k}": v for k, v in rates.items()}, on_step=True, on_epoch=False, batch_size=1
        )
        self.print(self._line(trainer, pl_module, outputs, rates))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        seconds = time.perf_counter() - self._val_start
        self._paused += seconds
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        shown = " | ".join(f"{k} {_number(v)}" for k, v in sorted(metrics.items()))
        self.print(f"validation at step {trainer.global_step} | {shown} | {seconds:.1f} s")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps, elapsed = trainer.global_step - self._first_step, time.perf_counter() - self._start
        self.print(f"done: {steps:,} steps in {_clock(elapsed)} ({steps / max(elapsed, 1e-9):.2f} steps/s)")

    def _rates(self, trainer: L.Trainer) -> dict[str, float]:
        """Throughput since the last line; the interval's one read-back from the device."""
        counts = {T: n for T, n in self._window.items()}
        on_device = [T for T, n in counts.items() if isinstance(n, Tensor)]
        if on_device:  # one transfer for all of them; it waits for the queued steps to finish
            values = torch.stack([counts[T].long() for T in on_device]).tolist()
            counts.update(zip(on_device, values))
        elif trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        now = time.perf_counter()
        seconds = max(now - self._mark - self._paused, 1e-9)
        self._mark, self._paused = now, 0.0
        world = trainer.world_size
        rates = {"samples_per_sec": self._samples * world / seconds}
        if counts:
            tokens = sum(n for key, n in counts.items() if not isinstance(key, tuple) or key[0] == "source")
            rates["tokens_per_sec"] = tokens * world / seconds
            estimate = self._flops_per_token or (lambda key: None)
            per_token = {key: estimate(key) for key in counts}  # None: the model gives no estimate
            if None not in per_token.values():
                flops = sum(n * per_token[key] for key, n in counts.items())
                rates["tflops_per_device"] = flops / seconds / 1e12
                if self._peak:
                    rates["mfu"] = flops / seconds / self._peak
        self._window, self._samples = {}, 0
        return rates

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, rates: dict) -> str:
        step, total = trainer.global_step, self._total
        parts = [f"step {step:,}"]
        if total not in (None, float("inf")) and total > 0:
            parts[0] += f"/{int(total):,} ({100 * step / total:.0f}%)"
        if "tokens_per_sec" in rates:
            parts.append(f"{rates['tokens_per_sec']:,.0f} tok/s")
        else:
            parts.append(f"{rates['samples_per_sec']:,.1f} samples/s")
        if "mfu" in rates:
            parts.append(f"MFU {100 * rates['mfu']:.1f}%")
        # train_loss as logged (callback_metrics: logging it with prog_bar=True would make Lightning read it
        # back after every batch), else the step's loss
        loss = trainer.callback_metrics.get("train_loss")
        if loss is None and isinstance(outputs, Mapping):
            loss = outputs.get("loss")
        if isinstance(loss, Tensor | int | float):
            parts.append(f"loss {float(loss):.3f}")
        elapsed = time.perf_counter() - self._start
        parts.append(f"elapsed {_clock(elapsed)}")
        done = step - self._first_step
        if total not in (None, float("inf")) and done > 0 and total > step:
            parts.append(f"ETA {_clock(elapsed / done * (total - step))}")
        return " | ".join(parts)



class ProgressMonitor(ThroughputMonitor, ProgressBar):
    """Progress as one plain line every ``every_n_steps`` optimizer steps (and after each validation),
    plus `ThroughputMonitor`'s throughput and MFU in the logs; replaces Lightning's progress bar.

    Lines are written to stdout by global rank 0 only, without carriage returns, so a log file reads like
    the console. The total is ``trainer.max_steps`` (or the estimated optimizer steps when that is unset).

    Args:
        every_n_steps: Steps between lines and throughput logs; ``None`` follows the trainer's
            ``log_every_n_steps``, so the one read-back per interval coincides with Lightning's logging.
        peak_flops: Peak FLOP/s of one device for MFU (`ThroughputMonitor`).
    """

    _printing = True

    def quiet(self) -> ThroughputMonitor:
        """The same monitor without the lines (for ``enable_progress_bar: false``)."""
        return ThroughputMonitor(every_n_steps=self.every_n_steps, peak_flops=self.peak_flops)


class ModelSummary(LightningModelSummary):
    """Lightning's model summary without its ``Total Flops`` line, which counts one forward pass of the
    module's ``example_input_array``: zoo tasks have none, so it read 0. The training FLOPs per token
    that MFU uses (`ThroughputMonitor`) are printed in its place when the backbone estimates them."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone = getattr(pl_module, "backbone", None)
        estimate = getattr(backbone, "flops_per_token", None)
        self._per_token = estimate() if callable(estimate) else None
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data: Any, *totals: Any, total_flops: int = 0, **kwargs: Any) -> None:
        lines = _format_summary_table(*totals, total_flops, *summary_data).split("\n")
        if lines[-1].endswith("Total Flops") and not total_flops:
            lines.pop()
            if self._per_token:
                lines.append(f"{get_human_readable_count(self._per_token):<10}Training FLOPs per token")
        summary_log.info("\n" + "\n".join(lines))

def _compute_dtype(trainer: L.Trainer) -> torch.dtype:
    precision = str(trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def _clock(seconds: float) -> str:
    """``0:41``, ``4:47``, ``1:02:03``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
