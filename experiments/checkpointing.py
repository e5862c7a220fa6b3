"""Checkpoints a crash cannot corrupt, and the fallback when one is unreadable anyway."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from variants.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, then renames it into place
    (atomic on one filesystem): a kill mid-write leaves the previous last.ckpt intact, never a
    truncated one. Lightning's default writes through a temporary file in the system temp
    folder, which is a copy, not a rename, when that is another filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(checkpoint, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` always ends as the final weights.

    With ``every_n_train_steps`` Lightning's ModelCheckpoint saves no epoch-end checkpoint, and
    at the end of training it saves last.ckpt only if it never saved one: a run of 400 steps
    checkpointed every 250 would end with the step-250 weights in last.ckpt. This one also saves
    last.ckpt when training ends on a step it has not saved.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def readable_checkpoint(directory: Path) -> Path | None:
    """last.ckpt, or, when it cannot be read, the newest readable ``step=<n>.ckpt`` (with a
    warning naming both, and the bad file kept as last.ckpt.unreadable); None when the folder
    holds no checkpoint (a fresh start)."""
    steps = sorted(directory.glob("step=*.ckpt"), key=lambda p: -int(re.findall(r"step=(\d+)", p.name)[0]))
    candidates = [p for p in (directory / "last.ckpt", *steps) if p.is_file()]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or corrupt: try the previous one
            problems.append(f"{path.name} ({type(error).__name__})")
            continue
        if problems:
            rank_zero_warn(f"cannot read {', '.join(problems)}; resuming from {path}")
            _set_aside(directory / "last.ckpt")
        return path
    raise UserError(f"no readable checkpoint in {directory}: {', '.join(problems)}; start afresh without --ckpt_path")


@rank_zero_only
def _set_aside(last: Path) -> None:
    """Keep an unreadable last.ckpt for inspection, out of the way of the next one (Lightning
    would otherwise write last-v1.ckpt beside it)."""
    if last.is_file():
        last.replace(last.with_name("last.ckpt.unreadable"))
