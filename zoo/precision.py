"""The precision a run computes in when its recipe leaves ``trainer.precision`` unset (``null``): bf16
autocast on a CPU that computes bf16 natively, fp32 on one that would emulate it.

CPUs differ: Intel's AMX and AMD's Zen 4/5 (``avx512_bf16``) multiply bf16 matrices in hardware (4.5x
fp32's rate on this project's AMD EPYC), while older CPUs convert every element and run slower than in
fp32. So the choice follows the machine, not the recipe's author; ``--trainer.precision=32-true`` or
``bf16-mixed`` still forces either. A GPU run left unset keeps Lightning's default (fp32).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BF16_FEATURES = ("amx_bf16", "avx512_bf16")
"""CPU flags (as Linux's ``/proc/cpuinfo`` names them) of native bf16 matrix arithmetic, best first."""


def native_bf16(cpuinfo: str | None = None) -> str | None:
    """The CPU feature that computes bf16 natively (``amx_bf16`` or ``avx512_bf16``), ``None`` without one.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (read when ``None``; elsewhere than Linux, torch's own
            CPU probes answer).
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else None
    if cpuinfo is not None:
        flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
        return next((feature for feature in BF16_FEATURES if feature in flags), None)
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for feature, probe in probes.items():
        if getattr(torch.cpu, probe, lambda: False)():
            return feature
    return None


def on_cpu(accelerator: object) -> bool:
    """Whether a Trainer with this ``accelerator`` setting computes on the CPU."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("auto", "gpu"):
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return "cpu" in name


def choose_precision(accelerator: object, cpuinfo: str | None = None) -> tuple[str, str]:
    """The precision for an unset ``trainer.precision``, and the line that says why."""
    if not on_cpu(accelerator):
        return "32-true", "precision: 32-true (unset on an accelerator: Lightning's default)"
    feature = native_bf16(cpuinfo)
    if feature is not None:
        return "bf16-mixed", (
            f"precision: bf16-mixed (this CPU computes bf16 natively: {feature}; "
            "--trainer.precision=32-true forces fp32)"
        )
    return "32-true", (
        "precision: 32-true (this CPU has no native bf16, neither amx_bf16 nor avx512_bf16, so bf16 would "
        "be emulated and slower; --trainer.precision=bf16-mixed forces it)"
    )


def say(line: str) -> None:
    """Print ``line`` once, on the global rank 0 process (before the Trainer exists), to stderr."""
    import os

    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"zoo: {line}", file=sys.stderr, flush=True)
