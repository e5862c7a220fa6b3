"""Callbacks the base config adds to every run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from common.files import write_json


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
        # Atomic: a grid reads metrics.json to decide that a run finished.
        write_json(path, metrics, sort_keys=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)


class HParamsSummary(pl.Callback):
    """Logs the run's hyperparameters with its final test metrics as ``hp/...`` to TensorBoard
    (the HParams dashboard then compares a grid's runs) when the test pass ends.

    Hyperparameters are the module's and the datamodule's, flattened to dotted keys; final
    metrics are those the test and the last validation logged.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("zeroshot/", "retrieval/", "crosslingual/")) -> None:
        self.prefixes = tuple(prefixes)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        metrics = {
            f"hp/{key}": float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(self.prefixes) and math.isfinite(float(value))
        }
        if not loggers or not metrics:
            return
        params = _flatten(dict(pl_module.hparams)) | _flatten(dict(getattr(trainer.datamodule, "hparams", {})), "data")
        params["seed"] = int(os.environ.get("PL_GLOBAL_SEED", -1))
        for logger in loggers:
            logger.log_hyperparams(params, metrics)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested hparams -> {dotted key: number, bool or str}, what TensorBoard's HParams accepts."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= _flatten(value, name)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                flat |= _flatten(item, f"{name}.{i}") if isinstance(item, dict) else {f"{name}.{i}": _scalar(item)}
        else:
            flat[name] = _scalar(value)
    return flat


def _scalar(value: object) -> object:
    return value if isinstance(value, (int, float, bool, str)) else str(value)
