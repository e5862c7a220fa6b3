"""DeCLIP's training step against CLIP's on the demo towers, data loading included.

    .venv/bin/python benchmarks/declip_step.py [--steps 30] [--warmup 5] [--rounds 2] [-- --key value ...]

Trains ``clip.yaml`` and ``declip.yaml``, each with ``demo.yaml``'s batch (128) on the base towers
(ResNet-10t at 64 px, the 4-layer text transformer), through ``python -m experiments fit``
exactly as a run trains (ShapesWorld rendered by the loader's worker: DeCLIP's two image views,
EDA text views and masks are made there), with no validation and no test pass. A step is the
wall time between consecutive batch ends after ``--warmup`` steps; the median of each run is
reported, the two presets alternating ``--rounds`` times (the host's speed drifts: compare the
ratio, measured side by side). Anything after ``--`` goes to both runs' command lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]


class StepTimes(pl.Callback):
    """Writes the wall time between consecutive training batch ends, after ``warmup`` steps."""

    def __init__(self, warmup: int, report: str) -> None:
        self.warmup, self.report = warmup, Path(report)
        self.times: list[float] = []
        self.last: float | None = None
        self.seen = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        now = time.perf_counter()
        if self.last is not None and self.seen >= self.warmup:
            self.times.append(now - self.last)
        self.last, self.seen = now, self.seen + 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report.write_text(json.dumps(self.times))


def step_time(preset: str, steps: int, warmup: int, overrides: list[str]) -> float:
    from experiments.__main__ import main as experiments

    configs = REPO / "experiments" / "configs"
    with tempfile.TemporaryDirectory(prefix="declip_step-") as tmp:
        report = Path(tmp) / "times.json"
        callback = {"class_path": "declip_step.StepTimes", "init_args": {"warmup": warmup, "report": str(report)}}
        experiments([
            "fit", "--config", str(configs / f"{preset}.yaml"), "--config", str(configs / "demo.yaml"),
            "--trainer.max_steps", str(steps + warmup + 1), "--trainer.limit_val_batches", "0",
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", tmp, f"--trainer.callbacks+={json.dumps(callback)}", *overrides,
        ])  # fmt: skip
        return statistics.median(json.loads(report.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args, overrides = parser.parse_known_args()
    overrides = [a for a in overrides if a != "--"]
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).parent))  # this file's callback, by class path
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    measured: dict[str, list[float]] = {"clip": [], "declip": []}
    for round_ in range(args.rounds):
        for preset in ("clip", "declip") if round_ % 2 == 0 else ("declip", "clip"):
            measured[preset].append(step_time(preset, args.steps, args.warmup, overrides))
            print(f"round {round_ + 1}: {preset} {measured[preset][-1]:.3f} s/step", flush=True)
    clip, declip = (statistics.median(measured[p]) for p in ("clip", "declip"))
    print("\n| preset | s/step (median of rounds) |\n| --- | ---: |")
    print(f"| clip | {clip:.3f} |\n| declip | {declip:.3f} |")
    print(f"declip_over_clip={declip / clip:.2f}")


if __name__ == "__main__":
    main()
