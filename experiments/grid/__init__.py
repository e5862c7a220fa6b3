"""Ablation grids: ``python -m experiments grid experiments/grids/<name>.yaml [--workers N]
[--dry-run] [--retry-failed]``.

A grid file expands into ordinary LightningCLI runs, each in ``runs/<grid>/<run>/`` (its
config.yaml, TensorBoard events, checkpoints/last.ckpt, metrics.json, and the grid's own
``grid_status.json`` and ``log.txt``)::

    name: variants                       # runs/variants/ (default: the file's stem)
    configs: [experiments/configs/demo.yaml]   # --config files of every run, first
    product:                             # every combination of these
      config: [experiments/configs/clip.yaml, experiments/configs/siglip.yaml]   # one more --config
      model.lr: [1.0e-3, 5.0e-4]         # any dotted key of the run config
    zip:                                 # varied together (equal lengths), crossed with product
      model.warmup_steps: [50, 100]
      trainer.max_steps: [400, 800]
    seeds: [0, 1, 2]                     # seed_everything; runs differing only in it are one group
    run_name: "{config}-lr{model.lr}-s{seed}"   # {key} is the value ({config}: the file's stem)
    # A string value may hold {seed}, e.g. model.init_from: ["runs/pre/clip-s{seed}/checkpoints/last.ckpt"]:
    # each seed's run starts from the same seed's checkpoint (paired two-stage comparisons).
    args: ["--trainer.precision", "32-true"]    # extra arguments of every run, last
    slurm: {partition: gpu, time_min: 120, nodes: 1, gpus_per_node: 4, cpus_per_task: 8}  # --launcher slurm
    tune: {key: model.lr, values: [3.0e-4, 1.0e-3], seeds: [100, 101], metric: zeroshot/shapesworld_val/shape/top1}
    # each group's model.lr chosen on validation in runs of its own seeds first (experiments/grid/tuning.py)

Every run is validated (keys, types, class paths, unique names) before any starts. Re-running
skips finished runs (and failed ones unless --retry-failed); one failing run never stops the
others. ``results.csv`` and ``results.md`` summarise the final metrics: the mean and its 95%
confidence interval over seeds per group (analysis/stats.py), failed runs listed.

``spec.py`` reads and validates a grid file into runs, ``launch.py`` runs them (local processes
or a submitit job array), ``results.py`` writes the results table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from experiments.grid.launch import run_local, run_slurm
from experiments.grid.results import results
from experiments.grid.spec import Grid, Run, load_grid, validate
from experiments.grid.tuning import apply_choices, choose, tuning_runs

__all__ = ["Grid", "Run", "load_grid", "main", "results", "run_local", "run_slurm", "validate"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="a grid YAML file, e.g. experiments/grids/variants.yaml")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (each gets cores / workers threads)")
    parser.add_argument(
        "--launcher", choices=("local", "slurm"), default="local",
        help="local processes, or a submitit job array (SLURM where sbatch exists, else submitit's local executor)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    validate(grid)
    tuning = replace(grid, runs=tuning_runs(grid))
    validate(tuning)
    if args.dry_run:
        for run in tuning.runs + grid.runs:
            print(f"{run.name} [{run.status()['status']}]: python -m experiments {shlex.join(run.args)}")
        if grid.tune is not None:
            print(f"(the final runs then take each group's {grid.tune.key} chosen on {grid.tune.metric})")
        return

    def launch(which: Grid) -> None:
        if args.launcher == "slurm":
            run_slurm(which, args.retry_failed)
        else:
            run_local(which, args.workers, args.retry_failed)

    if tuning.runs:
        launch(tuning)
        choices = choose(grid, tuning.runs)
        for group, choice in choices.items():
            print(
                f"  {group}: {choice['key']} = {choice['value']} (validation means {choice['means']})", file=sys.stderr
            )
        apply_choices(grid, choices)
    launch(grid)
    csv_path, md_path = results(grid)
    print(Path(md_path).read_text())
    print(f"results: {csv_path}, {md_path}", file=sys.stderr)
