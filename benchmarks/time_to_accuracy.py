"""Time to accuracy: wall time for the demo preset to reach 90% zero-shot shape top-1.

    .venv/bin/python benchmarks/time_to_accuracy.py [--target 0.9] [--every 25] [-- --key value ...]

Trains ``clip.yaml`` + ``demo.yaml`` (exactly ``make demo``'s run, with its default speed levers)
through ``python -m experiments fit``, validating every ``--every`` steps instead of the demo's
50 to see the crossing more finely; validation does not change the training trajectory. The
run stops at the first validation whose ``--metric`` (zero-shot top-1 on the validation
images) reaches ``--target``. Reported: the step, the wall time since the fit started, and the
training time alone (the wall time minus the validations, which a run sets to taste). Anything
after ``--`` is passed to the CLI, e.g. ``-- --trainer.precision 32-true`` to compare a lever.
The run directory goes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]


class StopAtAccuracy(pl.Callback):
    """Stops the fit at the first validation where ``metric`` >= ``target``; times it."""

    def __init__(self, metric: str, target: float, report: str) -> None:
        self.metric, self.target, self.report = metric, target, Path(report)
        self.start = self.validation_start = 0.0
        self.validating = 0.0
        self.curve: list[tuple[int, float, float]] = []  # (step, train seconds, metric)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.validating += now - self.validation_start
        if self.metric not in trainer.callback_metrics:
            raise KeyError(f"no metric '{self.metric}'; logged: {sorted(trainer.callback_metrics)}")
        value = float(trainer.callback_metrics[self.metric])
        train_s = now - self.start - self.validating
        self.curve.append((trainer.global_step, train_s, value))
        print(f"step {trainer.global_step:4d}  {train_s:6.1f} s of training  {self.metric} = {value:.3f}", flush=True)
        if value >= self.target:
            trainer.should_stop = True
            self._write(reached=True, wall_s=now - self.start)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.report.exists():
            self._write(reached=False, wall_s=time.perf_counter() - self.start)

    def _write(self, reached: bool, wall_s: float) -> None:
        step, train_s, value = self.curve[-1] if self.curve else (0, 0.0, float("nan"))
        result = {"reached": reached, "step": step, "wall_s": wall_s, "train_s": train_s, "value": value,
                  "validation_s": self.validating, "curve": self.curve}  # fmt: skip
        self.report.write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metric", default="zeroshot/shapesworld_val/shape/top1")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--every", type=int, default=25, help="validate every N steps")
    args, cli_overrides = parser.parse_known_args()
    cli_overrides = [a for a in cli_overrides if a != "--"]
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).parent))  # this file's callback, by class path
    from experiments.__main__ import main as experiments

    with tempfile.TemporaryDirectory(prefix="time_to_accuracy-") as tmp:
        report = Path(tmp) / "result.json"
        callback = {"class_path": "time_to_accuracy.StopAtAccuracy",
                    "init_args": {"metric": args.metric, "target": args.target, "report": str(report)}}  # fmt: skip
        configs = REPO / "experiments" / "configs"
        cli_args = ["fit", "--config", str(configs / "clip.yaml"), "--config", str(configs / "demo.yaml"),
                    "--trainer.val_check_interval", str(args.every), "--trainer.enable_progress_bar", "false",
                    "--trainer.logger.init_args.save_dir", tmp, f"--trainer.callbacks+={json.dumps(callback)}",
                    *cli_overrides]  # fmt: skip
        print("python -m experiments " + " ".join(cli_args), flush=True)
        experiments(cli_args)  # a user mistake in the overrides ends here with one error line
        result = json.loads(report.read_text())
    verb = "reached" if result["reached"] else "did NOT reach"
    print(f"\n{verb} {args.metric} >= {args.target} at step {result['step']} ({result['value']:.3f}): "
          f"{result['train_s']:.1f} s of training, {result['wall_s']:.1f} s wall "
          f"({result['validation_s']:.1f} s validating)")  # fmt: skip
    print(f"time_to_accuracy_s={result['train_s']:.1f}")


if __name__ == "__main__":
    main()
