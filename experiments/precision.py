"""bf16 only where the CPU computes it: a CPU without native bf16 instructions emulates every
bf16 matmul, hundreds of times slower than float32 (benchmarks/RESULTS.md), so a bf16 run there
would take hours where float32 takes minutes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn

BF16 = ("bf16-mixed", "bf16-true", "bf16")
# /proc/cpuinfo flags of native bf16 arithmetic: AVX-512 BF16 and AMX (x86), the BF16 extension (Arm).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 instructions; True where it cannot be told (no /proc/cpuinfo)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return True
        cpuinfo = path.read_text(errors="replace")
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    return bool(flags & NATIVE_BF16_FLAGS)


def runs_on_cpu(accelerator: object) -> bool:
    accelerator = str(accelerator or "auto")
    if accelerator == "cpu":
        return True
    gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return accelerator == "auto" and not gpu


def cpu_precision(trainer_config: dict, cpuinfo: str | None = None) -> str | None:
    """The precision a run should use instead of a bf16 one on a CPU without native bf16
    ("32-true"), or None to keep the configured one. ``CLIP_VARIANTS_KEEP_BF16=1`` keeps bf16."""
    precision = str(trainer_config.get("precision"))
    if precision not in BF16 or os.environ.get("CLIP_VARIANTS_KEEP_BF16"):
        return None
    if not runs_on_cpu(trainer_config.get("accelerator")) or cpu_has_native_bf16(cpuinfo):
        return None
    return "32-true"


def use_float32_without_native_bf16(trainer_config: dict) -> None:
    """Switch a bf16 run on a CPU without native bf16 to float32, with one warning saying so."""
    replacement = cpu_precision(trainer_config)
    if replacement is not None:
        rank_zero_warn(
            f"trainer.precision {trainer_config['precision']} on a CPU without native bf16 (no avx512_bf16, amx_bf16 "
            f"or bf16 flag in /proc/cpuinfo) would emulate every bf16 matmul, hundreds of times slower: running "
            f"{replacement} instead (CLIP_VARIANTS_KEEP_BF16=1 keeps bf16)"
        )
        trainer_config["precision"] = replacement
