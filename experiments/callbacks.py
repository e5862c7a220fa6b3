"""Callbacks the base config adds to every run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from common.files import write_json


class FinalMetrics(pl.Callback):
    """Writes the last value of every logged metric to ``<run dir>/metrics.json``.

    Updated at the end of fit, of test and of a validation pass run on its own (after fit), so a
    grid or a notebook reads one small file per run instead of parsing event files. ``history``
    maps each evaluated step to the metrics its evaluation passes computed (the module's
    ``last_evaluation``): every validation pass during fit (a learning curve, one file read away),
    the final weights' and, with ``eval_steps`` (``experiments.budgets``), the weights of each
    earlier step saved; only the passes after fit of the final weights set the top-level values.
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        self.filename = filename
        self._log_dir: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The run directory, kept: an earlier step's weights are evaluated with the loggers
        # detached (experiments.budgets), when trainer.log_dir would point elsewhere.
        if trainer.loggers:
            self._log_dir = trainer.log_dir  # a collective under DDP: every rank must ask

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A fresh fit in a folder an earlier attempt left (a grid retrying a failed run) starts a
        # new metrics.json: its history must not mix two attempts. A resumed fit keeps it.
        if self._log_dir is not None and trainer.ckpt_path is None:
            self._forget(Path(self._log_dir) / self.filename)

    @rank_zero_only
    def _forget(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, top_level: bool = True, history: bool = True
    ) -> None:
        if self._log_dir is not None:
            path = Path(self._log_dir) / self.filename
            evaluated_step = getattr(pl_module, "evaluated_step", None)
            evaluation = dict(getattr(pl_module, "last_evaluation", {})) if history else {}
            self._write_on_rank_zero(trainer, evaluated_step, evaluation, path, top_level and evaluated_step is None)

    @rank_zero_only
    def _write_on_rank_zero(
        self, trainer: pl.Trainer, evaluated_step: int | None, evaluation: dict[str, float], path: Path, top_level: bool
    ) -> None:
        metrics = json.loads(path.read_text()) if path.exists() else {}
        step = trainer.global_step if evaluated_step is None else evaluated_step
        if evaluation:
            history = metrics.setdefault("history", {})
            history[str(step)] = history.get(str(step), {}) | _finite_or_text(evaluation)  # keys: read them as ints
        if top_level:
            metrics |= _finite_or_text({key: float(value) for key, value in trainer.callback_metrics.items()})
            metrics["global_step"] = trainer.global_step
        # Atomic: a grid reads metrics.json to decide that a run finished.
        write_json(path, metrics, sort_keys=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The history has each validation pass already, at its own step (the last one may be earlier).
        self._write(trainer, pl_module, history=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # a pass of its own, not one inside fit
            self._write(trainer, pl_module)
        elif trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._write(trainer, pl_module, top_level=False)  # a learning curve: the history only

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module)


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
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning at run time, not a typed attribute
        params = _flatten(dict(pl_module.hparams)) | _flatten(dict(getattr(datamodule, "hparams", {})), "data")
        params["seed"] = int(os.environ.get("PL_GLOBAL_SEED", -1))
        for logger in loggers:
            logger.log_hyperparams(params, metrics)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "evaluated_step", None) is None:  # the final weights, not a saved step's
            self._log(trainer, pl_module)


def _finite_or_text(values: dict[str, float]) -> dict[str, float | str]:
    """JSON has no inf or nan: those are kept as their text ("nan")."""
    return {key: value if math.isfinite(value) else str(value) for key, value in values.items()}


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
