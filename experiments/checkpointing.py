"""Checkpoints a crash cannot corrupt, and the fallback when one is unreadable anyway."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from common.errors import UserError
from common.files import holds_objects, save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, then renames it into place
    (atomic on one filesystem): a kill mid-write leaves the previous last.ckpt intact, never a
    truncated one. Lightning's default writes through a temporary file in the system temp
    folder, which is a copy, not a rename, when that is another filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_torch(path, checkpoint)


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` always ends as the final weights.

    With ``every_n_train_steps`` Lightning's ModelCheckpoint saves no epoch-end checkpoint, and
    at the end of training it saves last.ckpt only if it never saved one: a run of 400 steps
    checkpointed every 250 would end with the step-250 weights in last.ckpt. This one also saves
    last.ckpt when training ends on a step it has not saved, including step 0 (max_steps 0: the
    initial weights, which the analysis can then measure).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A fit of 0 steps (max_steps 0: a claim's "at init" arm) skips the training loop and its
        # hooks; its last.ckpt holds the initial weights, which the analysis can then measure.
        if self.save_last and trainer.global_step == 0 and not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# Lightning's special --ckpt_path values; anything else is a file.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def check_resumable(path: str | Path, training: bool = True) -> None:
    """A ``--ckpt_path`` file must be a checkpoint the command can use (for ``fit``, with the
    training state to resume from; for test/validate/predict, weights are enough); else one
    UserError naming the cause (missing, unreadable or truncated, refused by
    ``torch.load(weights_only=True)``, or weights without the training state) and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--ckpt_path {path}: no such file; give a run's checkpoint (<run>/checkpoints/last.ckpt) or 'last' "
            "with --trainer.logger.init_args.version <n>"
        )
    try:  # mmap: only the record is read, not every tensor (the trainer reads the file next)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # noqa: BLE001 - whatever torch cannot read is refused in one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        if holds_objects(error):
            raise UserError(
                f"--ckpt_path {path}: refused by torch.load(weights_only=True), it holds pickled objects other "
                "than tensors and plain data; resume only from checkpoints written by this suite"
            ) from None
        # torch's weights-only preamble says nothing about this file: keep the unpickler's own reason
        reason = next((line for line in lines if line.startswith("Unsupported")), lines[0])
        raise UserError(
            f"--ckpt_path {path}: not a readable checkpoint (truncated, or not a torch file: {reason}); give a "
            "checkpoint a fit wrote (<run>/checkpoints/last.ckpt) and copied whole"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"--ckpt_path {path}: not a Lightning checkpoint (it holds no state_dict); give a checkpoint a fit wrote"
        )
    if training and not {"optimizer_states", "loops"} <= set(checkpoint):
        raise UserError(
            f"--ckpt_path {path}: not a training checkpoint (no optimizer or loop state to resume); to start a new "
            "run from its weights use --model.init_from PATH"
        )


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
        except Exception as error:  # noqa: BLE001 - truncated or corrupt: try the previous one
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
