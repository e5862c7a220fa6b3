"""Results across runs: each run's final metrics, read from run directories or from a grid's
``results.csv``, and summarised over seeds with ``analysis.stats``.

A run directory (``runs/<name>/version_<n>/`` or a grid's ``runs/<grid>/<run>/``) holds
config.yaml, metrics.json (its final values, and a history of every evaluation pass) and, once analysed,
analysis/report.json; ``collect_runs`` reads them into one row per run. A grid's results.csv (the
per-run file that is small enough to commit) is read back by ``read_results_csv``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import yaml
from torch import nn

from analysis.stats import group_summary, markdown_table, mean_ci, metric_bounds
from variants.module import ContrastiveModule

SEED_SUFFIX = re.compile(r"[-_]s(?:eed)?(?P<seed>\d+)$")
HEADLINE_PREFIXES = ("zeroshot/", "retrieval/", "crosslingual/", "benchmark/")  # benchmark/: a SuiteEvaluator


def split_run_name(name: str) -> tuple[str, int | None]:
    """ "mmd-s3" -> ("mmd", 3): a run's group (the run name without its seed) and its seed."""
    match = SEED_SUFFIX.search(name)
    return (name[: match.start()], int(match["seed"])) if match else (name, None)


def group_of(run: str) -> str:
    """ "clip-s0" -> "clip"; "clip/version_3" -> "clip" (seeds and versions are one group)."""
    return split_run_name(re.sub(r"/version_\d+$", "", run))[0]


def collect_runs(root: str | Path) -> list[dict]:
    """One row per run under ``root`` with a metrics.json: {"run", "name", "seed", "path",
    "checkpoint", "config", "metrics"}; analysis metrics (report.json) are merged in. "name" is
    the variant: the logger's name without a seed suffix, so a grid's seeds form one group."""
    rows = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        run = metrics_path.parent
        config_path = run / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        metrics = json.loads(metrics_path.read_text())
        report = run / "analysis" / "report.json"
        if report.is_file():
            metrics |= json.loads(report.read_text())["metrics"]
        logger = ((config.get("trainer") or {}).get("logger") or {}).get("init_args") or {}
        checkpoint = run / "checkpoints" / "last.ckpt"
        rows.append(
            {
                "run": str(run.relative_to(root)) if run != Path(root) else run.name,
                "name": group_of(logger.get("name", run.parent.name)),
                "seed": config.get("seed_everything"),
                "path": str(run),
                "checkpoint": str(checkpoint) if checkpoint.is_file() else None,
                "config": config,
                "metrics": metrics,
            }
        )
    return rows


def summarize(rows: list[dict], metric: str, by: str = "name") -> dict[str, dict]:
    """``mean_ci`` of ``metric`` for each group of rows (default: the run name, i.e. variant);
    fractions keep their interval inside [0, 1] (``analysis.stats``)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if metric in row["metrics"]:
            groups.setdefault(row[by], []).append(row["metrics"][metric])
    return {group: mean_ci(values, bounds=metric_bounds(metric)) for group, values in groups.items()}


def read_results_csv(path: str | Path) -> list[dict]:
    """A grid's results.csv -> one row per run: {"run", "status", "seed", "group", "values",
    "metrics"}. Columns after "seed" are the grid's axes until the first metric (metric names hold
    a "/", axis keys do not); "group" joins the axis values as the grid does ("config=clip")."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        after_seed = columns[columns.index("seed") + 1 :] if "seed" in columns else []
        axes = [c for c in after_seed if "/" not in c]
        metric_names = [c for c in after_seed if "/" in c]
        rows = []
        for record in reader:
            values = {axis: record[axis] for axis in axes}
            rows.append(
                {
                    "run": record["run"],
                    "status": record.get("status", "finished"),
                    "seed": int(record["seed"]) if record.get("seed") not in (None, "") else None,
                    "group": ", ".join(f"{axis}={value}" for axis, value in values.items()) or "all",
                    "values": values,
                    "metrics": {name: float(record[name]) for name in metric_names if record[name] not in ("", None)},
                }
            )
    return rows


def results_markdown(title: str, rows: list[dict], failures: list[str] | None = None) -> str:
    """The results.md of a grid: per group (finished runs / all runs) the mean and 95% interval
    over seeds of every headline test metric, in %; failed runs listed below."""
    names = sorted({name for row in rows for name in row["metrics"]})
    headline = [n for n in names if n.startswith(HEADLINE_PREFIXES)] or names
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    finished = {
        g: [r["metrics"] for r in members if r["status"] == "finished" and r["metrics"]]
        for g, members in groups.items()
    }
    counts = {g: f"{len(finished[g])}/{len(members)}" for g, members in groups.items()}
    lines = [f"# {title}", "", f"{len(rows)} runs; mean [95% CI] over seeds, in %.", ""]
    lines += markdown_table(group_summary(finished, headline), headline, [_label(n) for n in headline], counts)
    if failures:
        lines += ["", "Failed runs (not in the means):", ""] + [f"- {failure}" for failure in failures]
    return "\n".join(lines) + "\n"


def _label(name: str) -> str:
    return (
        name.replace("zeroshot/shapesworld_test/", "")
        .replace("retrieval/shapesworld_test/", "")
        .replace("crosslingual/shapesworld_test/", "en->zh ")
        .replace("/top1", "")
    )


def temperatures(model: ContrastiveModule) -> dict[str, float]:
    """The temperature 1/s of every term with a logit scale (InfoNCE, SigLIP, FILIP, ...)."""
    return {
        name: float(1.0 / scale().detach())
        for name, term in model.terms.items()
        if isinstance(scale := getattr(term, "logit_scale", None), nn.Module)
    }
