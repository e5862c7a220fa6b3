"""Budget curves from one run: weights saved at declared steps, evaluated after fit.

``eval_steps: [100, 200, 400]`` (a top-level key of a run's config, or ``--eval_steps``) saves the
weights at each of those steps to ``checkpoints/eval/step=<n>.ckpt`` (weights and the configs the
analysis rebuilds the run from, no optimizer state). After fit, the final weights are evaluated
first (the validation tasks when ``validate_after_fit``, the test tasks when ``test_after_fit``),
then each saved step's weights the same way, so ``metrics.json`` keeps the final values at the top
level and gains ``history``: ``{"<step>": {metric: value}}`` for every evaluated step, the final
one included. TensorBoard gets the same metrics at their steps.

Read the curve as "this run at step n", not "a run of n steps": the learning-rate schedule spans the
whole run, so at an intermediate step the rate has not decayed yet. The verdict of a claim at its
largest budget is the run's own end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from common.errors import UserError
from variants.module import ContrastiveModule

EVAL_DIR = Path("checkpoints") / "eval"


def check_eval_steps(steps: list[int], max_steps: int) -> list[int]:
    """The declared steps, sorted and unique; each must be in [0, max_steps]."""
    bad = [
        s for s in steps if not isinstance(s, int) or isinstance(s, bool) or s < 0 or (max_steps >= 0 and s > max_steps)
    ]
    if bad:
        raise UserError(
            f"eval_steps {bad}: each is a training step in [0, trainer.max_steps = {max_steps}] at which the weights "
            "are saved and evaluated after fit"
        )
    return sorted(set(steps))


class SaveAtSteps(pl.Callback):
    """Saves the weights at each of ``steps`` (0: the initial weights) to ``<run>/checkpoints/eval/``."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def _save(self, trainer: pl.Trainer) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, and every rank saves
        if trainer.global_step in self.steps and log_dir is not None:
            trainer.save_checkpoint(Path(log_dir) / EVAL_DIR / f"step={trainer.global_step}.ckpt", weights_only=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:  # a fresh start, not a resumed run
            self._save(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self._save(trainer)


def saved_steps(log_dir: str | Path) -> dict[int, Path]:
    """{step: checkpoint} of the weights SaveAtSteps wrote under a run directory."""
    found = {}
    for path in (Path(log_dir) / EVAL_DIR).glob("step=*.ckpt"):
        step = path.stem.removeprefix("step=")
        if step.isdigit():
            found[int(step)] = path
    return dict(sorted(found.items()))


@contextmanager
def weights_of(module: ContrastiveModule, checkpoint: Path, step: int) -> Iterator[None]:
    """The module holds the weights of ``checkpoint`` (saved at ``step``) inside the block, its own
    after it; ``module.evaluated_step`` says which step the callbacks are looking at."""
    own = {k: v.clone() for k, v in module.state_dict().items()}
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(saved)
    module.evaluated_step = step
    try:
        yield
    finally:
        module.load_state_dict(own)
        module.evaluated_step = None


@contextmanager
def evaluation_outside_fit(trainer: pl.Trainer, log_at: int | None) -> Iterator[None]:
    """Validation after fit reads the whole validation set (``limit_val_batches: 0`` turns off
    validation during fit only); weights of an earlier step are evaluated with the loggers
    detached, as the loop would log them at the final step (the caller logs them at ``log_at``)."""
    limit, loggers = trainer.limit_val_batches, trainer.loggers
    trainer.limit_val_batches = limit or 1.0
    if log_at is not None:
        trainer.loggers = []
    try:
        yield
    finally:
        trainer.limit_val_batches, trainer.loggers = limit, loggers


def evaluate_after_fit(
    trainer: pl.Trainer, module: ContrastiveModule, datamodule: object, stages: list[str], steps: list[int]
) -> None:
    """The final weights through ``stages`` ("validate", "test"), first, so that a failure later
    cannot cost the values of record; then the weights saved at each of ``steps`` before the end
    (only the declared ones: a folder may hold an earlier attempt's other checkpoints)."""
    for stage in stages:
        with evaluation_outside_fit(trainer, log_at=None):
            getattr(trainer, stage)(module, datamodule=datamodule, verbose=stage == "test")
    log_dir = trainer.log_dir
    saved = saved_steps(log_dir) if log_dir else {}
    for step in steps:
        if step == trainer.global_step:
            continue
        if step not in saved:
            rank_zero_warn(f"eval_steps: no weights saved at step {step} (a run resumed after it?); not evaluated")
            continue
        metrics: dict[str, float] = {}
        with weights_of(module, saved[step], step), evaluation_outside_fit(trainer, log_at=step):
            for stage in stages:
                getattr(trainer, stage)(module, datamodule=datamodule, verbose=False)
                metrics |= dict(getattr(module, "last_evaluation", {}))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
