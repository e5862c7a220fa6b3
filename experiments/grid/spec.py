"""A grid file read into runs: every key checked, every run's arguments parsed as the run will
parse them, before anything starts (the grid file format is in ``experiments/grid/__init__.py``)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError, one_line
from common.files import read_yaml

GRID_KEYS = {"name", "configs", "product", "zip", "seeds", "run_name", "args", "runs_dir", "slurm", "tune"}
TUNE_KEYS = {"key", "values", "seeds", "metric"}
SLURM_KEYS = {"partition", "time_min", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism"}
STATUS = "grid_status.json"


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
        return ", ".join(f"{key}={short(value)}" for key, value in self.values.items()) or "all"

    def status(self) -> dict:
        path = self.directory / STATUS
        return json.loads(path.read_text()) if path.is_file() else {"status": "pending"}


@dataclass(frozen=True)
class Tuning:
    """The grid file's ``tune:`` section: ``key`` takes each of ``values`` in runs of ``seeds``,
    for every group, and each group's final runs take the value with the best mean ``metric``
    (a validation metric, higher is better): ``experiments/grid/tuning.py``."""

    key: str
    values: list
    seeds: list[int]
    metric: str


@dataclass
class Grid:
    name: str
    runs: list[Run] = field(default_factory=list)
    directory: Path = Path("runs")
    slurm: dict = field(default_factory=dict)  # the grid file's `slurm:` section
    tune: Tuning | None = None
    template: str = ""  # run_name
    configs: list[str] = field(default_factory=list)  # every run's --config files, first
    extra: list[str] = field(default_factory=list)  # every run's last arguments


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid file; every mistake is a UserError naming the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    spec = read_yaml(path) or {}
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

    zip_rows = [dict(zip(zipped, row, strict=True)) for row in zip(*zipped.values(), strict=True)] if zipped else [{}]
    runs = []
    # Seeds outermost: a grid stopped part-way has every arm at its first seeds, so paired
    # comparisons can already be read.
    for seed in seeds:
        for combo in itertools.product(*product.values()):
            for zip_row in zip_rows:
                values = dict(zip(product, combo, strict=True)) | zip_row
                run_name = _fill(template, values | {"seed": seed}, path)
                runs.append(make_run(run_name, seed, values, configs, extra, directory))
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(
            f"{path}: run_name {template!r} gives duplicate run names ({', '.join(duplicates[:5])}): add the varying keys"
        )
    tune = _tuning(spec.get("tune"), seeds, set(product) | set(zipped), extra, path)
    return Grid(name, runs, directory, slurm, tune, template, configs, extra)


def _tuning(spec: object, seeds: list[int], axes: set[str], extra: list[str], path: Path) -> Tuning | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != TUNE_KEYS:
        raise UserError(f"{path}: 'tune' takes exactly {', '.join(sorted(TUNE_KEYS))}; got {spec!r}")
    values, tune_seeds, metric = spec["values"], spec["seeds"], spec["metric"]
    if not isinstance(values, list) or len(values) < 2:
        raise UserError(f"{path}: tune.values lists at least two values of {spec['key']} to choose from")
    if not isinstance(tune_seeds, list) or not tune_seeds or not all(isinstance(s, int) for s in tune_seeds):
        raise UserError(f"{path}: tune.seeds is a non-empty list of integers, got {tune_seeds!r}")
    if set(tune_seeds) & set(seeds):
        raise UserError(
            f"{path}: tune.seeds {sorted(set(tune_seeds) & set(seeds))} are also final seeds; tune on seeds of their own"
        )
    if spec["key"] in axes or f"--{spec['key']}" in [str(a).split("=")[0] for a in extra]:
        raise UserError(
            f"{path}: tune.key {spec['key']} is also an axis or an 'args' entry of the grid; tune it or set it, not both"
        )
    if not isinstance(metric, str) or "_val/" not in metric:
        raise UserError(
            f"{path}: tune.metric {metric!r} is not a validation metric (its name holds '_val/', e.g. "
            "zeroshot/shapesworld_val/shape/top1): the choice never reads the test set"
        )
    return Tuning(str(spec["key"]), values, tune_seeds, metric)


def make_run(name: str, seed: int, values: dict, configs: list[str], extra: list[str], directory: Path) -> Run:
    """One run of a grid: its configs, then its axis values, its seed and folder, then ``extra``."""
    args = ["fit", *(a for c in configs for a in ("--config", c))]
    for key, value in values.items():
        args += ["--config", str(value)] if key == "config" else [f"--{key}", _cli_value(value, seed)]
    args += [
        "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(directory),
        "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.version", "",
        *extra,
    ]  # fmt: skip
    return Run(name, seed, values, args, directory / name)


def validate(grid: Grid) -> None:
    """Parse every run's arguments as the run will, building nothing (about 0.2 s a run)."""
    from jsonargparse import ArgumentError

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
        return short(values[key])

    name = re.sub(r"\{([^{}]+)\}", value, template)
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def short(value: object) -> str:
    """How a value reads in a run name: a config file by its stem, numbers compactly."""
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        return Path(value).stem
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value, separators=(",", ":"))


def _cli_value(value: object, seed: int) -> str:
    if isinstance(value, str):  # "{seed}" in a value: the run's seed (a checkpoint of the same seed's run)
        return value.replace("{seed}", str(seed))
    return json.dumps(value)  # numbers, booleans, lists and dicts as JSON, which the parser reads
