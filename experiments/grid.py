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
    args: ["--trainer.precision", "32-true"]    # extra arguments of every run, last
    slurm: {partition: gpu, time_min: 120, nodes: 1, gpus_per_node: 4, cpus_per_task: 8}  # --launcher slurm

Every run is validated (keys, types, class paths, unique names) before any starts. Re-running
skips finished runs (and failed ones unless --retry-failed); one failing run never stops the
others. ``results.csv`` and ``results.md`` summarise the final metrics: mean +- std and a 95%
confidence interval over seeds per group, failed runs marked.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from variants.errors import UserError
from variants.metrics import mean_ci

GRID_KEYS = {"name", "configs", "product", "zip", "seeds", "run_name", "args", "runs_dir", "slurm"}
SLURM_KEYS = {"partition", "time_min", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism"}
STATUS = "grid_status.json"
LOG_TAIL_LINES = 20


@dataclass
class Run:
    name: str
    seed: int
    values: dict[str, object]  # axis key -> value (the seed excluded)
    args: list[str]  # the `python -m experiments fit` arguments
    directory: Path

    @property
    def group(self) -> str:
        """The runs that differ only in their seed share a group."""
        return ", ".join(f"{key}={_short(value)}" for key, value in self.values.items()) or "all"

    def status(self) -> dict:
        path = self.directory / STATUS
        return json.loads(path.read_text()) if path.is_file() else {"status": "pending"}


@dataclass
class Grid:
    name: str
    runs: list[Run] = field(default_factory=list)
    directory: Path = Path("runs")
    slurm: dict = field(default_factory=dict)  # the grid file's `slurm:` section


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid file; every mistake is a UserError naming the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a grid file is a mapping (name, configs, product, zip, seeds, run_name, args)")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise UserError(
            f"{path}: unknown grid key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(GRID_KEYS))}"
        )
    name = str(spec.get("name", path.stem))
    product, zipped = spec.get("product") or {}, spec.get("zip") or {}
    for section, axes in (("product", product), ("zip", zipped)):
        if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
            raise UserError(f"{path}: '{section}' maps dotted keys to non-empty lists of values")
    if len({len(v) for v in zipped.values()}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zipped.items())
        raise UserError(f"{path}: the 'zip' lists must have equal lengths ({lengths})")
    if set(product) & set(zipped):
        raise UserError(f"{path}: key(s) {', '.join(sorted(set(product) & set(zipped)))} in both product and zip")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{path}: 'seeds' is a non-empty list of integers, got {seeds!r}")
    configs = [str(c) for c in spec.get("configs") or []]
    extra = [str(a) for a in spec.get("args") or []]
    for config in configs + [str(c) for c in product.get("config", []) + zipped.get("config", [])]:
        if not Path(config).is_file():
            raise UserError(f"{path}: config file not found: {config}")
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict) or set(slurm) - SLURM_KEYS:
        raise UserError(f"{path}: 'slurm' takes {', '.join(sorted(SLURM_KEYS))}; got {slurm!r}")
    template = spec.get("run_name") or "-".join([*(f"{{{k}}}" for k in (*product, *zipped)), "s{seed}"])
    directory = Path(spec.get("runs_dir", "runs")) / name

    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    runs = []
    for combo in itertools.product(*product.values()):
        for zip_row in zip_rows:
            values = dict(zip(product, combo)) | zip_row
            for seed in seeds:
                run_name = _fill(template, values | {"seed": seed}, path)
                args = ["fit", *(a for c in configs for a in ("--config", c))]
                for key, value in values.items():
                    args += ["--config", str(value)] if key == "config" else [f"--{key}", _cli_value(value)]
                args += [
                    "--seed_everything", str(seed),
                    "--trainer.logger.init_args.save_dir", str(directory),
                    "--trainer.logger.init_args.name", run_name,
                    "--trainer.logger.init_args.version", "",
                    *extra,
                ]  # fmt: skip
                runs.append(Run(run_name, seed, values, args, directory / run_name))
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(
            f"{path}: run_name {template!r} gives duplicate run names ({', '.join(duplicates[:5])}): add the varying keys"
        )
    return Grid(name, runs, directory, slurm)


def validate(grid: Grid) -> None:
    """Parse every run's arguments as the run will, building nothing (about 0.2 s a run)."""
    from jsonargparse import ArgumentError

    from experiments.__main__ import one_line
    from experiments.cli import validate as validate_args

    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    for run in grid.runs:
        try:
            with warnings.catch_warnings():  # LightningCLI warns that sys.argv is not what it parses
                warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
                warnings.filterwarnings("ignore", message=".*was deprecated.*")  # jsonargparse APIs Lightning calls
                validate_args(run.args)
        except (ArgumentError, UserError) as error:
            raise UserError(f"grid run {run.name}: {one_line(error)}") from None


def _fill(template: str, values: dict, path: Path) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise UserError(f"{path}: run_name uses {{{key}}}, which is not an axis key or 'seed'")
        return _short(values[key])

    name = re.sub(r"\{([^{}]+)\}", value, template)
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def _short(value: object) -> str:
    """How a value reads in a run name: a config file by its stem, numbers compactly."""
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        return Path(value).stem
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value, separators=(",", ":"))


def _cli_value(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, booleans, lists and dicts as JSON, which the parser reads


# ---- running --------------------------------------------------------------------------------
def run_local(grid: Grid, workers: int = 1, retry_failed: bool = False) -> list[Run]:
    """Run the pending runs, ``workers`` at a time (each gets cores / workers threads)."""
    todo = [run for run in grid.runs if _should_run(run, retry_failed)]
    skipped = len(grid.runs) - len(todo)
    print(f"grid {grid.name}: {len(grid.runs)} runs, {len(todo)} to run, {skipped} skipped", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for run, status in zip(todo, pool.map(lambda run: _run_one(run, threads), todo)):
            print(f"  {run.name}: {status['status']} ({status['seconds']:.0f} s)", file=sys.stderr)
    return todo


def _should_run(run: Run, retry_failed: bool) -> bool:
    status = run.status()["status"]
    if status == "finished" and (run.directory / "metrics.json").is_file():
        return False
    return status != "failed" or retry_failed


def run_slurm(grid: Grid, retry_failed: bool = False) -> list[Run]:
    """Submit the pending runs as one submitit job array and wait for it. On a SLURM cluster
    that is an sbatch array (partition, time, nodes, GPUs per node from the grid's `slurm:`
    section; one task per GPU, so Lightning's devices == ntasks-per-node holds); elsewhere
    submitit's local executor runs the same jobs as local processes."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    todo = [run for run in grid.runs if _should_run(run, retry_failed)]
    print(
        f"grid {grid.name}: {len(grid.runs)} runs, {len(todo)} to submit, {len(grid.runs) - len(todo)} skipped",
        file=sys.stderr,
    )
    if not todo:
        return todo
    s = grid.slurm
    nodes, gpus = int(s.get("nodes", 1)), int(s.get("gpus_per_node", 0))
    executor = submitit.AutoExecutor(folder=grid.directory / ".submitit")
    executor.update_parameters(
        name=f"grid-{grid.name}",
        timeout_min=int(s.get("time_min", 60)),
        nodes=nodes,
        tasks_per_node=max(1, gpus),  # one process per GPU
        gpus_per_node=gpus,
        cpus_per_task=int(s.get("cpus_per_task", os.cpu_count() or 1)),
        **({"mem_gb": s["mem_gb"]} if "mem_gb" in s else {}),
        **({"slurm_partition": s["partition"]} if "partition" in s else {}),
        slurm_array_parallelism=int(s.get("array_parallelism", len(todo))),
    )
    devices = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus)] if gpus else []
    for run in todo:
        run.directory.mkdir(parents=True, exist_ok=True)
    jobs = executor.map_array(_array_task, [run.args + devices for run in todo], [str(run.directory) for run in todo])
    for run, job in zip(todo, jobs):
        _write_status(run, {"status": "submitted", "job_id": job.job_id, "seconds": 0.0})
        print(f"  {run.name}: job {job.job_id}", file=sys.stderr)
    for run, job in zip(todo, jobs):
        try:
            job.result()
        except Exception as error:  # the job itself died (timeout, node failure): record it
            _write_status(run, {"status": "failed", "exit_code": -1, "job_id": job.job_id, "seconds": 0.0,
                                "log_tail": str(error).splitlines()[-LOG_TAIL_LINES:]})  # fmt: skip
        print(f"  {run.name}: {run.status()['status']}", file=sys.stderr)
    return todo


def _array_task(args: list[str], directory: str) -> int:
    """What every task of an array job runs: the training as a child process (it inherits the
    SLURM environment, so Lightning sets up DDP across the tasks); rank 0 records the status."""
    import submitit

    rank = submitit.JobEnvironment().global_rank
    run = Run(Path(directory).name, 0, {}, args, Path(directory))
    status = _run_one(run, threads=int(os.environ.get("SLURM_CPUS_PER_TASK", os.cpu_count() or 1)), record=rank == 0,
                      log_name="log.txt" if rank == 0 else f"log.rank{rank}.txt")  # fmt: skip
    return status["exit_code"]


def _run_one(run: Run, threads: int, record: bool = True, log_name: str = "log.txt") -> dict:
    run.directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CLIP_VARIANTS_TRACEBACK="1")
    command = [sys.executable, "-m", "experiments", *run.args]
    if record:
        _write_status(run, {"status": "running", "command": command, "seconds": 0.0})
    start = time.perf_counter()
    with open(run.directory / log_name, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    lines = (run.directory / log_name).read_text(errors="replace").splitlines()
    status = {
        "status": "finished" if code == 0 else "failed",
        "exit_code": code,
        "seconds": time.perf_counter() - start,
        "command": command,
        "log_tail": lines[-LOG_TAIL_LINES:] if code else [],
    }
    if record:
        _write_status(run, status)
    return status


def _write_status(run: Run, status: dict) -> None:
    _write(run.directory / STATUS, json.dumps(status, indent=2) + "\n")


# ---- results --------------------------------------------------------------------------------
def results(grid: Grid) -> tuple[Path, Path]:
    """``results.csv`` (one row per run) and ``results.md`` (mean +- std [95% CI] per group)."""
    rows = []
    for run in grid.runs:
        metrics_path = run.directory / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        rows.append({"run": run, "status": run.status(), "metrics": metrics})
    names = sorted({k for row in rows for k in row["metrics"] if _is_final(k)})
    axes = list(grid.runs[0].values) if grid.runs else []

    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["run", "status", "exit_code", "seed", *axes, *names])
    for row in rows:
        run, status = row["run"], row["status"]
        writer.writerow(
            [run.name, status["status"], status.get("exit_code", ""), run.seed, *(_short(run.values[a]) for a in axes)]
            + [row["metrics"].get(name, "") for name in names]
        )
    grid.directory.mkdir(parents=True, exist_ok=True)
    csv_path = _write(grid.directory / "results.csv", table.getvalue())

    headline = [n for n in names if n.startswith(("zeroshot/", "retrieval/"))] or names
    lines = [f"# Grid {grid.name}", "", f"{len(rows)} runs; mean ± std [95% CI] over seeds, in %.", ""]
    lines += [
        "| group | n | " + " | ".join(_label(n) for n in headline) + " |",
        "| --- | ---: |" + " ---: |" * len(headline),
    ]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["run"].group, []).append(row)
    for group, members in groups.items():
        done = [m for m in members if m["status"]["status"] == "finished" and m["metrics"]]
        cells = []
        for name in headline:
            stats = mean_ci(m["metrics"][name] for m in done if isinstance(m["metrics"].get(name), (int, float)))
            cells.append(_cell(stats))
        lines.append(f"| {group} | {len(done)}/{len(members)} | " + " | ".join(cells) + " |")
    failed = [row for row in rows if row["status"]["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (not in the means):", ""]
        for row in failed:
            tail = (row["status"].get("log_tail") or [""])[-1]
            lines.append(f"- {row['run'].name}: exit {row['status'].get('exit_code')}: {tail}")
    md_path = _write(grid.directory / "results.md", "\n".join(lines) + "\n")
    return csv_path, md_path


def _is_final(name: str) -> bool:
    return name.startswith(("zeroshot/", "retrieval/", "test/")) and "_val/" not in name


def _label(name: str) -> str:
    return (
        name.replace("zeroshot/shapesworld_test/", "").replace("retrieval/shapesworld_test/", "").replace("/top1", "")
    )


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci95"] is None:
        return f"{100 * stats['mean']:.1f}"
    low, high = stats["ci95"]
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _write(path: Path, text: str) -> Path:
    """Write through a temporary file and rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


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
    if args.dry_run:
        for run in grid.runs:
            print(f"{run.name} [{run.status()['status']}]: python -m experiments {shlex.join(run.args)}")
        return
    if args.launcher == "slurm":
        run_slurm(grid, args.retry_failed)
    else:
        run_local(grid, args.workers, args.retry_failed)
    csv_path, md_path = results(grid)
    print(Path(md_path).read_text())
    print(f"results: {csv_path}, {md_path}", file=sys.stderr)
