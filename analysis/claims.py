"""Verdicts on what papers claim: ``python -m analysis claims SOURCE [--out docs/claims]``.

A claim is data (``experiments/claims/claims.yaml``): a paper and what it says, the per-run
metric that decides it, two arms of a claim experiment (a grid whose arms are paired by seed:
the same seed gives both the same data order and initial towers) or one arm against a stated
value, and the expected direction, with an optional non-inferiority margin.

For each claim the paired differences d_s = arm_s - baseline_s over the seeds both arms finished
get a Student-t 95% interval (``analysis.stats``; kept inside the range a difference of the
metric can take). With the expected direction as + and the margin m (0 for a superiority claim):

    reproduced     the interval lies above -m      (for "less": below +m)
    contradicted   the interval lies below -m      (for "less": above +m)
    inconclusive   otherwise, or fewer than 2 paired seeds

SOURCE is a folder of runs (``runs``: each experiment's runs in ``runs/<grid name>/<run>/``);
metrics a run did not log (linear probe, consistency) are computed from its checkpoint and cached
in ``<run>/analysis/claims.json``. Each experiment's per-run values are written to
``OUT/runs/<experiment>.csv``, small enough to commit; given a folder holding such CSVs
(``docs/claims``) instead, the verdicts are recomputed from them without any run.
Writes ``OUT/claims.md``, ``OUT/claims.json`` and one figure per experiment, ``OUT/<experiment>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis.results import split_run_name
from analysis.stats import format_estimate, mean_ci, metric_bounds
from common.errors import UserError
from common.files import read_yaml, save_figure, write_json, write_text

REPOSITORY = Path(__file__).resolve().parents[1]  # grid paths in a registry are relative to it
REGISTRY = REPOSITORY / "experiments" / "claims" / "claims.yaml"
CLAIM_KEYS = {
    "id",
    "experiment",
    "paper",
    "where",
    "says",
    "metric",
    "arm",
    "baseline",
    "baseline_value",
    "baseline_metric",
    "expect",
    "margin",
}
EXPERIMENT_KEYS = {"grid", "figure", "wall_time"}
VERDICTS = ("reproduced", "contradicted", "inconclusive")
TEST_PREFIXES = ("zeroshot/", "retrieval/", "crosslingual/", "geometry/")  # the test metrics a run logs
# Raise when the definition of a metric computed from checkpoints changes: every run's cached
# values (<run>/analysis/claims.json) are then recomputed, not read back stale.
METRICS_VERSION = 2


@dataclass(frozen=True)
class Claim:
    """One check of one paper's claim (see the module docstring and the registry's header)."""

    id: str
    experiment: str
    paper: str
    says: str
    metric: str
    arm: str
    expect: str
    where: str = ""
    baseline: str | None = None
    baseline_value: float | None = None
    baseline_metric: str | None = None  # the baseline's own metric when it differs (another method's score)
    margin: float = 0.0

    @property
    def base_metric(self) -> str:
        return self.baseline_metric or self.metric


@dataclass(frozen=True)
class Experiment:
    id: str
    grid: str
    figure: dict = field(default_factory=dict)
    wall_time: str | None = None

    def grid_name(self, root: Path) -> str:
        """The folder the grid writes its runs to (its ``name``, default the file's stem)."""
        path = root / self.grid
        spec = read_yaml(path) if path.is_file() else None
        if not isinstance(spec, dict):
            raise UserError(f"claims: experiment {self.id}: grid file {path} not found or not a mapping")
        return str(spec.get("name", path.stem))


def load_registry(path: str | Path = REGISTRY) -> tuple[dict[str, Experiment], list[Claim]]:
    """Read and check the registry: every key known, every claim's experiment declared, an arm and
    either a baseline or a baseline_value, expect one of greater/less, a margin >= 0."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"claims registry not found: {path}")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict) or set(spec) - {"experiments", "claims"}:
        raise UserError(f"{path}: a claims registry is a mapping with 'experiments' and 'claims'")
    experiments = {}
    for name, entry in (spec.get("experiments") or {}).items():
        if not isinstance(entry, dict) or "grid" not in entry or set(entry) - EXPERIMENT_KEYS:
            raise UserError(
                f"{path}: experiment {name}: give 'grid' (and optionally {', '.join(sorted(EXPERIMENT_KEYS - {'grid'}))})"
            )
        experiments[name] = Experiment(name, **entry)
    claims = []
    for i, entry in enumerate(spec.get("claims") or []):
        where = f"{path}: claims[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: a claim is a mapping")
        unknown = set(entry) - CLAIM_KEYS
        missing = {"id", "experiment", "paper", "says", "metric", "arm", "expect"} - set(entry)
        if unknown or missing:
            raise UserError(
                f"{where} ({entry.get('id', '?')}): unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            )
        if entry["experiment"] not in experiments:
            raise UserError(f"{where} ({entry['id']}): experiment {entry['experiment']!r} is not under 'experiments'")
        if (entry.get("baseline") is None) == (entry.get("baseline_value") is None):
            raise UserError(
                f"{where} ({entry['id']}): give exactly one of 'baseline' (an arm) or 'baseline_value' (a number)"
            )
        if entry["expect"] not in ("greater", "less"):
            raise UserError(f"{where} ({entry['id']}): expect is 'greater' or 'less', got {entry['expect']!r}")
        if not (isinstance(entry.get("margin", 0.0), (int, float)) and entry.get("margin", 0.0) >= 0):
            raise UserError(f"{where} ({entry['id']}): margin must be a number >= 0")
        if entry.get("baseline_metric") is not None and entry.get("baseline") is None:
            raise UserError(
                f"{where} ({entry['id']}): baseline_metric names the metric of a baseline arm; give 'baseline'"
            )
        if entry.get("baseline_value") is not None and not isinstance(entry["baseline_value"], (int, float)):
            raise UserError(f"{where} ({entry['id']}): baseline_value must be a number")
        claims.append(Claim(**entry))
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: claim ids must be unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    return experiments, claims


# ---- per-run values ------------------------------------------------------------------------
def runs_of(
    folder: Path, metrics: Iterable[str], groups: Iterable[str] | None = None, compute: bool = True
) -> list[dict]:
    """One row per finished run under ``folder`` (a grid's folder; only the ``groups`` given):
    {"run", "group", "seed", "metrics"}, with the requested metrics from metrics.json or, when a
    run did not log them, computed from its checkpoint (cached in <run>/analysis/claims.json); every
    other test metric the run logged comes along (context for a reader of the per-run CSV). A
    metric logged as non-finite ("nan") stays NaN and counts as missing in the statistics."""
    rows = []
    wanted = list(dict.fromkeys(metrics))
    keep = None if groups is None else set(groups)
    for run in finished_runs(folder):
        group, seed = split_run_name(run.name)
        if keep is not None and group not in keep:
            continue
        logged = json.loads((run / "metrics.json").read_text())
        values = {
            m: float(logged[m])
            for m in [*wanted, *sorted(k for k in logged if k.startswith(TEST_PREFIXES) and "_test/" in k)]
            if isinstance(logged.get(m), (int, float, str)) and _number(logged[m])
        }
        missing = [m for m in wanted if m not in values]
        if missing and compute:
            values |= checkpoint_metrics(run, missing)
        rows.append({"run": run.name, "group": group, "seed": seed, "metrics": values})
    return rows


def finished_runs(folder: Path) -> list[Path]:
    """The runs under a grid's folder that wrote metrics.json and that the grid did not mark unfinished."""
    runs = []
    for metrics_path in sorted(folder.glob("*/metrics.json")):
        status = metrics_path.parent / "grid_status.json"
        if not status.is_file() or json.loads(status.read_text()).get("status") == "finished":
            runs.append(metrics_path.parent)
    return runs


def _number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def checkpoint_metrics(run: Path, names: list[str]) -> dict[str, float]:
    """Metrics no run logs, from the run's checkpoint: linear probes on the embeddings or the
    vision trunk (``linear_probe/shapesworld/<task>/top1``, ``linear_probe_trunk/...``),
    consistency scores (``consistency/shapesworld/...``), grounded probes
    (``probes/shapesworld/<probe>/acc``) and the explanations' pointing game
    (``explain/<method>/...``; NaN for a method the run's towers do not allow); cached per run."""
    cache_path = run / "analysis" / "claims.json"
    checkpoint = run / "checkpoints" / "last.ckpt"
    stat = checkpoint.stat() if checkpoint.is_file() else None
    stamp = f"{stat.st_mtime_ns}:{stat.st_size}:{METRICS_VERSION}" if stat is not None else None
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if stamp is not None and cache.pop("checkpoint", None) != stamp:  # another checkpoint (a re-run) or definition
        cache = {}
    cache.pop("checkpoint", None)  # kept when the checkpoint was deleted: its values still stand
    todo = [n for n in names if n not in cache]
    if todo:
        from analysis import consistency, zeroshot
        from analysis.checkpoint import load_checkpoint
        from analysis.suite_specs import SuiteOptions, load_suites
        from datamodules.suites import ClassificationSuite

        if not checkpoint.is_file():
            raise UserError(f"claims: {run} has no checkpoints/last.ckpt to compute {', '.join(todo)} from")
        loaded = load_checkpoint(checkpoint)
        suites = [s for s in load_suites(["shapesworld"], loaded, SuiteOptions()) if isinstance(s, ClassificationSuite)]
        for kind in ("linear_probe", "linear_probe_trunk"):
            for suite in suites:
                if f"{kind}/{suite.name}/top1" in todo:
                    probe = zeroshot.linear_probe(loaded, suite, trunk=kind == "linear_probe_trunk")
                    cache |= zeroshot.metric_names([probe])
        if any(n.startswith("consistency/") for n in todo):
            cache |= consistency.suite_consistency(loaded, suites)
        if any(n.startswith("probes/") for n in todo):
            from analysis.probes import selection_probe
            from analysis.suite_specs import load_probe_suites

            for suite in load_probe_suites(["shapesworld"], loaded, SuiteOptions()):
                if f"probes/{suite.name}/acc" in todo:
                    cache[f"probes/{suite.name}/acc"] = selection_probe(loaded, suite)["acc"]
        if any(n.startswith("explain/") for n in todo):
            from analysis.explain import METHODS, available_methods
            from analysis.explain.command import explain_pointing

            applicable = available_methods(loaded.model)
            if applicable:
                cache |= explain_pointing(loaded, run / "analysis", methods=applicable)["metrics"]
            # A method the towers do not allow (relevance on a CNN) is missing for this run, not an error.
            not_applicable = set(METHODS) - set(applicable)
            cache |= {n: math.nan for n in todo if n.startswith("explain/") and n.split("/")[1] in not_applicable}
        write_json(cache_path, cache | {"checkpoint": stamp})  # the checkpoint exists here
    unknown = [n for n in names if n not in cache]
    if unknown:
        raise UserError(
            f"claims: no run of {run.parent.name} logs {', '.join(unknown)}, and the analysis cannot compute it"
        )
    return {n: math.nan if cache[n] is None else float(cache[n]) for n in names}


def runs_csv(rows: list[dict], metrics: list[str]) -> str:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["run", "group", "seed", *metrics])
    for row in rows:
        writer.writerow([row["run"], row["group"], row["seed"], *(row["metrics"].get(m, "") for m in metrics)])
    return table.getvalue()


def read_runs_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        metrics = [c for c in reader.fieldnames or [] if c not in ("run", "group", "seed")]
        return [
            {
                "run": r["run"],
                "group": r["group"],
                "seed": int(r["seed"]) if r["seed"] else None,
                "metrics": {m: float(r[m]) for m in metrics if r[m] not in ("", None)},
            }
            for r in reader
        ]


# ---- verdicts ------------------------------------------------------------------------------
def verdict(claim: Claim, rows: list[dict]) -> dict:
    """The paired effect of one claim over its rows, its interval and the verdict."""

    def by_seed(group: str, metric: str) -> dict[int | None, float]:
        values = {r["seed"]: r["metrics"].get(metric, math.nan) for r in rows if r["group"] == group}
        return {seed: v for seed, v in values.items() if math.isfinite(v)}  # a non-finite value is missing

    arm = by_seed(claim.arm, claim.metric)
    bounds = metric_bounds(claim.metric)
    if claim.baseline is not None:
        base = by_seed(claim.baseline, claim.base_metric)
        seeds = sorted(s for s in arm if s in base and s is not None)
        differences = [arm[s] - base[s] for s in seeds]
        base_bounds = metric_bounds(claim.base_metric)
        base_stats = mean_ci([base[s] for s in seeds], bounds=base_bounds)
        both = bounds is not None and base_bounds is not None
        diff_bounds = (bounds[0] - base_bounds[1], bounds[1] - base_bounds[0]) if both else None
    else:
        seeds = sorted(s for s in arm if s is not None)
        differences = [arm[s] - claim.baseline_value for s in seeds]
        base_stats = {"mean": claim.baseline_value, "std": None, "ci95": None, "n": 0, "clipped": False}
        diff_bounds = None if bounds is None else (bounds[0] - claim.baseline_value, bounds[1] - claim.baseline_value)
    effect = mean_ci(differences, bounds=diff_bounds)
    sign = 1.0 if claim.expect == "greater" else -1.0
    if effect["ci95"] is None:
        outcome = "inconclusive"
    else:
        low, high = sorted(sign * bound for bound in effect["ci95"])
        outcome = "reproduced" if low > -claim.margin else "contradicted" if high < -claim.margin else "inconclusive"
    return {
        "claim": asdict(claim),
        "seeds": seeds,
        "arm": mean_ci([arm[s] for s in seeds], bounds=bounds),
        "baseline": base_stats,
        "effect": effect,
        "differences": differences,
        "verdict": outcome,
    }


def _scale(metric: str) -> float:
    """Fractions are shown in %, everything else as it is."""
    return 100.0 if metric_bounds(metric) == (0.0, 1.0) else 1.0


def _estimate(stats: dict, metric: str) -> str:
    scale = _scale(metric)
    return format_estimate(stats, scale=scale, digits=1 if scale == 100.0 else 3)


def markdown(results: list[dict], experiments: dict[str, Experiment], missing: dict[str, str]) -> str:
    lines = [
        "# What the suite reproduces",
        "",
        "Each row is one check of a paper's claim on ShapesWorld: the paired difference arm - baseline over",
        "seeds (the same seed gives both arms the same data order and initial towers), its Student-t 95%",
        "interval (kept inside the metric's range, † where that cut it), and the verdict: reproduced when",
        "the interval lies on the claimed side (beyond the non-inferiority margin, where one is given),",
        "contradicted when it lies on the other side, inconclusive otherwise. Fractions are in %",
        "(percentage points for differences). Generated by `python -m analysis claims`; the per-run",
        "values are in `runs/<experiment>.csv`, the registry in `experiments/claims/claims.yaml`.",
        "",
        "| claim | paper | metric | arm vs baseline | arm | baseline | effect [95% CI] | n | verdict |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        c = Claim(**r["claim"])
        base = c.baseline if c.baseline is not None else f"value {c.baseline_value:g}"
        rule = (
            f"{'>' if c.expect == 'greater' else '<'} {'-' if c.expect == 'greater' else '+'}{_scale(c.metric) * c.margin:g}"
            if c.margin
            else f"{'>' if c.expect == 'greater' else '<'} 0"
        )
        metric = f"`{c.metric}`" + (f" vs `{c.baseline_metric}`" if c.baseline_metric else "")
        lines.append(
            f"| {c.says} | {c.paper}, {c.where} | {metric} | {c.arm} vs {base} (expect {rule}) | "
            f"{_estimate(r['arm'], c.metric)} | {_estimate(r['baseline'], c.base_metric) if c.baseline else base} | "
            f"{_estimate(r['effect'], c.metric)} | {len(r['seeds'])} | **{r['verdict']}** |"
        )
    if missing:
        lines += ["", "Not run yet (no runs and no committed per-run CSV):", ""]
        lines += [f"- {experiment}: {why}" for experiment, why in missing.items()]
    timed = [e for e in experiments.values() if e.wall_time]
    if timed:
        lines += ["", "| experiment | grid | measured wall time |", "| --- | --- | --- |"]
        lines += [f"| {e.id} | `{e.grid}` | {e.wall_time} |" for e in timed]
    return "\n".join(lines) + "\n"


# ---- figures -------------------------------------------------------------------------------
def figure(experiment: Experiment, rows: list[dict]) -> Figure | None:
    """The experiment's figure as its registry entry describes it; None without one."""
    spec = experiment.figure
    if not spec:
        return None
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for metric, value in row["metrics"].items():
            if math.isfinite(value):
                values.setdefault(metric, {}).setdefault(row["group"], []).append(value)
    if spec.get("kind") == "line":
        return _line_figure(experiment.id, spec, values.get(spec["metric"], {}))
    if spec.get("kind") == "bars":
        return _bars_figure(experiment.id, spec, values)
    raise UserError(f"claims: experiment {experiment.id}: figure kind must be 'line' or 'bars'")


def _line_figure(title: str, spec: dict, groups: dict[str, list[float]]) -> Figure:
    metric, scale = spec["metric"], _scale(spec["metric"])
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, points) in enumerate((spec.get("series") or {}).items()):
        xs, means, lows, highs = [], [], [], []
        for group, x in points.items():
            seeds = groups.get(group, [])
            if not seeds:
                continue
            stats = mean_ci(seeds, bounds=metric_bounds(metric))
            ax.scatter([x] * len(seeds), [scale * v for v in seeds], color=f"C{i}", s=12, alpha=0.5)
            xs.append(x)
            means.append(scale * stats["mean"])
            low, high = stats["ci95"] or (stats["mean"], stats["mean"])
            lows.append(scale * (stats["mean"] - low))
            highs.append(scale * (high - stats["mean"]))
        if xs:
            ax.errorbar(
                xs, means, yerr=[lows, highs], color=f"C{i}", marker="o", capsize=3, label=f"{label} (mean, 95% CI)"
            )
    for j, (label, group) in enumerate((spec.get("lines") or {}).items()):
        seeds = groups.get(group, [])
        if seeds:
            ax.axhline(
                scale * float(np.mean(seeds)),
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"{label} (mean of {len(seeds)})",
            )
    if spec.get("log_x"):
        ax.set_xscale("log")
    ax.set_xlabel(spec.get("x_label", ""))
    ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def _bars_figure(title: str, spec: dict, values: dict[str, dict[str, list[float]]]) -> Figure:
    metrics, arms = spec["metrics"], spec["arms"]
    fig = Figure(figsize=(3.2 * len(metrics), 3.4), layout="constrained")
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        scale = _scale(metric)
        for i, arm in enumerate(arms):
            seeds = values.get(metric, {}).get(arm, [])
            if not seeds:
                continue
            stats = mean_ci(seeds, bounds=metric_bounds(metric))
            low, high = stats["ci95"] or (stats["mean"], stats["mean"])
            ax.bar(i, scale * stats["mean"], color=f"C{i}", alpha=0.6,
                   yerr=[[scale * (stats["mean"] - low)], [scale * (high - stats["mean"])]], capsize=4)  # fmt: skip
            ax.scatter([i] * len(seeds), [scale * v for v in seeds], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(metric.replace("/shapesworld_test/", "/").replace("/shapesworld/", "/"), fontsize=8)
    fig.suptitle(f"{title}: mean, 95% CI and each seed", fontsize=9)
    return fig


# ---- the command ---------------------------------------------------------------------------
def claims(
    source: str | Path, out: str | Path = "docs/claims", registry: str | Path = REGISTRY, only: list[str] | None = None
) -> dict:
    """Verdicts of every claim in the registry (or the ``only`` ids) from ``source`` into ``out``."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(
            f"claims: {source} is not a folder (a runs root such as runs/, or a folder of per-run CSVs such as docs/claims)"
        )
    experiments, all_claims = load_registry(registry)
    selected = [c for c in all_claims if not only or c.id in only]
    if only and len(selected) != len(set(only)):
        unknown = sorted(set(only) - {c.id for c in all_claims})
        raise UserError(
            f"claims: unknown claim id(s) {', '.join(unknown)}; known: {', '.join(c.id for c in all_claims)}"
        )
    results, missing, rows_by_experiment = [], {}, {}
    for experiment in dict.fromkeys(c.experiment for c in selected):
        spec = experiments[experiment]
        metrics = list(dict.fromkeys(
            [m for c in selected if c.experiment == experiment for m in (c.metric, c.base_metric)]
            + ([spec.figure["metric"]] if "metric" in spec.figure else []) + list(spec.figure.get("metrics", []))
        ))  # fmt: skip
        folder = source / spec.grid_name(REPOSITORY)
        # Per-run CSVs committed earlier: in the source (`claims docs/claims`) or, when the runs of
        # this experiment are gone (runs/ is not kept), in the output folder being rewritten.
        committed = next(
            (p for p in (source / "runs" / f"{experiment}.csv", out / "runs" / f"{experiment}.csv") if p.is_file()),
            source / "runs" / f"{experiment}.csv",
        )
        groups = {g for c in selected if c.experiment == experiment for g in (c.arm, c.baseline) if g is not None}
        groups |= set(spec.figure.get("arms", [])) | set((spec.figure.get("lines") or {}).values())
        groups |= {g for series in (spec.figure.get("series") or {}).values() for g in series}
        # A grid folder may be shared with other experiments (claims-variants): it stands for this
        # experiment only once every group this experiment needs has a finished run there.
        finished = {split_run_name(run.name)[0] for run in finished_runs(folder)} if folder.is_dir() else set()
        if groups <= finished:
            rows = runs_of(folder, metrics, groups)
            columns = metrics + sorted({m for row in rows for m in row["metrics"]} - set(metrics))
            write_text(out / "runs" / f"{experiment}.csv", runs_csv(rows, columns))
        elif committed.is_file():
            rows = read_runs_csv(committed)
            copy = out / "runs" / f"{experiment}.csv"
            if not copy.exists() or copy.resolve() != committed.resolve():
                write_text(copy, committed.read_bytes().decode())  # bytes: the csv module's line ends kept
        else:
            absent = ", ".join(sorted(groups - finished))
            missing[experiment] = f"no finished runs of {absent}: python -m experiments grid {spec.grid}"
            continue
        rows_by_experiment[experiment] = rows
        fig = figure(spec, rows)
        if fig is not None:
            save_figure(fig, out / f"{experiment}.png")
    for claim in selected:
        if claim.experiment in rows_by_experiment:
            results.append(verdict(claim, rows_by_experiment[claim.experiment]))
    summary = {
        "claims": results,
        "not_run": missing,
        "counts": {v: sum(r["verdict"] == v for r in results) for v in VERDICTS},
    }
    write_json(out / "claims.json", summary)
    write_text(out / "claims.md", markdown(results, experiments, missing))
    return summary
