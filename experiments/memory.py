"""Host-memory allocator setting for CPU training (a speed lever the base config turns on)."""

from __future__ import annotations

import ctypes
import os
import platform

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CPUAccelerator

# glibc's mallopt parameters (malloc.h) and their defaults.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)  # the process's own symbols, glibc's malloc among them
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory(keep: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (``keep``) or set its two limits back to their
    defaults; False off glibc.

    glibc serves every allocation above its mmap threshold (at most 32 MiB) with fresh pages and
    unmaps them on free, and trims the heap top beyond 128 KiB; a CPU training step then faults
    in every large activation again, step after step. With mmap off and trimming off, freed
    blocks stay in the heap for the next step. Setting either limit turns glibc's adaptive mmap
    threshold off for the rest of the process (a restored process maps blocks from 128 KiB up).
    Restoring does not call ``malloc_trim`` (it runs while other threads may still allocate);
    the heap shrinks again as later frees reach the trim threshold.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_MAX, 0 if keep else DEFAULT_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1 if keep else DEFAULT_TRIM_THRESHOLD)
    return True


class ReuseFreedMemory(pl.Callback):
    """While a CPU run fits, keep freed host memory in the process instead of returning it.

    Without it every step faults in its large activations again (benchmarks/RESULTS.md counts the
    page faults and the time they cost). The price is that the process holds its peak memory until
    the fit ends (and beyond, until frees return it); DataLoader workers forked during the fit
    inherit the setting. A thread that glibc has moved to a secondary malloc arena still gets its
    large blocks mmapped (seen in one fresh process of a few). Does nothing on GPU runs, off Linux/glibc, or when the environment
    already tunes glibc (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``: yours are kept).
    Remove it from ``trainer.callbacks`` to switch it off.
    """

    def __init__(self) -> None:
        self.active = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        tuned = any(os.environ.get(name) for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"))
        if stage == "fit" and isinstance(trainer.accelerator, CPUAccelerator) and not tuned:
            self.active = keep_freed_memory(True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.active:
            keep_freed_memory(False)
            self.active = False
