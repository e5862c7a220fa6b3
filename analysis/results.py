"""Results across runs: collect each run's final metrics, summarise them over seeds.

A run directory (``runs/<name>/version_<n>/``) holds config.yaml, metrics.json (written at the
end of fit and test) and, once analysed, analysis/report.json; ``collect_runs`` reads them into
one row per run, and ``summarize`` gives mean, std and a 95% confidence interval per group.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import yaml

from variants.metrics import mean_ci
from variants.module import ContrastiveModule

SEED_SUFFIX = re.compile(r"[-_]s(eed)?\d+$")


def group_of(run: str) -> str:
    """ "clip-s0" -> "clip"; "clip/version_3" -> "clip" (seeds and versions are one group)."""
    run = re.sub(r"/version_\d+$", "", run)
    return SEED_SUFFIX.sub("", run)


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
    """``mean_ci`` of ``metric`` for each group of rows (default: the run name, i.e. variant)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if metric in row["metrics"]:
            groups[row[by]].append(row["metrics"][metric])
    return {group: mean_ci(values) for group, values in groups.items()}


def temperatures(model: ContrastiveModule) -> dict[str, float]:
    """The temperature 1/s of every term with a logit scale (InfoNCE, SigLIP, FILIP, ...)."""
    return {
        name: float(1.0 / term.logit_scale().detach())
        for name, term in model.terms.items()
        if hasattr(term, "logit_scale")
    }
