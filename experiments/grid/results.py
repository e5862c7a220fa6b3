"""A grid's results: ``results.csv``, one row per run (status, seed, axis values, every final test
metric), and ``results.md``, mean and 95% interval over seeds per group, made from that CSV by
``analysis.results`` (the same code reads a committed CSV back)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from analysis.results import read_results_csv, results_markdown
from common.files import write_text
from experiments.grid.spec import Grid, short


def results(grid: Grid) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` in the grid's folder; returns their paths."""
    rows: list[dict] = []
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
            [run.name, status["status"], status.get("exit_code", ""), run.seed, *(short(run.values[a]) for a in axes)]
            + [row["metrics"].get(name, "") for name in names]
        )
    csv_path = write_text(grid.directory / "results.csv", table.getvalue())
    failures = [
        f"{row['run'].name}: exit {row['status'].get('exit_code')}: {(row['status'].get('log_tail') or [''])[-1]}"
        for row in rows
        if row["status"]["status"] == "failed"
    ]
    markdown = results_markdown(f"Grid {grid.name}", read_results_csv(csv_path), failures)
    return csv_path, write_text(grid.directory / "results.md", markdown)


def _is_final(name: str) -> bool:
    return name.startswith(("zeroshot/", "retrieval/", "crosslingual/", "benchmark/", "test/")) and "_val/" not in name
