"""Callbacks the base config adds to every run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only


class FinalMetrics(pl.Callback):
    """Writes the last value of every logged metric to ``<run dir>/metrics.json``.

    Updated at the end of fit and of test, so a grid or a notebook reads one small file per
    run instead of parsing event files.
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        self.filename = filename

    def _write(self, trainer: pl.Trainer) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if log_dir is not None:
            self._write_on_rank_zero(trainer, Path(log_dir) / self.filename)

    @rank_zero_only
    def _write_on_rank_zero(self, trainer: pl.Trainer, path: Path) -> None:
        metrics = json.loads(path.read_text()) if path.exists() else {}
        for key, value in trainer.callback_metrics.items():
            value = float(value)
            metrics[key] = value if math.isfinite(value) else str(value)
        metrics["global_step"] = trainer.global_step
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)
