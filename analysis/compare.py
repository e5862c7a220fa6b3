"""Compare runs from their TensorBoard event files: ``python -m analysis compare runs/<grid>``.

Reads every run under the folder with TensorBoard's own EventAccumulator (the evaluation curves
from the run's ``metrics.json`` history where it has one: the steps the weights were evaluated at,
and the evaluations after fit), groups the runs that
differ only in their seed (a trailing ``-s<seed>`` of the run name, or the versions of one
``runs/<name>/``), and writes ``compare.json`` / ``compare.md`` (final value of each metric:
mean, std and 95% CI over seeds, ``analysis.stats``) and ``compare.png`` (curves per group: the mean over seeds
with a band from the lowest to the highest seed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis.results import group_of
from analysis.stats import group_summary, markdown_table
from common.errors import UserError
from common.files import save_figure, write_json, write_text

CURVES = (
    "train/loss",
    "zeroshot/shapesworld_val/shape/top1",
    "zeroshot/shapesworld_val/color_shape_heldout/top1",
    "retrieval/shapesworld_val/i2t_R@1",
)


def read_runs(root: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run directory (relative to root): {scalar tag: [(step, value), ...]}} for every folder
    under ``root`` holding event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"not a folder of runs: {root}")
    runs = {}
    for directory in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(directory), size_guidance={"scalars": 0}).Reload()
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        runs[str(directory.relative_to(root)) or directory.name] = scalars | history_curves(directory)
    if not runs:
        raise UserError(f"no TensorBoard event files under {root}: pass the folder a grid or runs were written to")
    return runs


def history_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from the run's metrics.json history ({} without one)."""
    path = run / "metrics.json"
    try:
        history = json.loads(path.read_text()).get("history", {}) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return {}  # a damaged file: the event files still tell
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step in sorted(history, key=int):
        for tag, value in history[step].items():
            if isinstance(value, (int, float)):
                curves[tag].append((int(step), float(value)))
    return dict(curves)


def compare(root: str | Path, out: str | Path | None = None, curves: tuple[str, ...] = CURVES) -> dict:
    """Final-metric table and curve figure of every group of runs under ``root``."""
    root = Path(root)
    out = Path(out) if out else root
    runs = read_runs(root)
    groups: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        groups[group_of(run)].append(run)
    finals = sorted(
        {tag for scalars in runs.values() for tag in scalars if tag.startswith(("zeroshot/", "retrieval/"))}
    )
    finals_by_run = {
        run: {tag: scalars[tag][-1][1] for tag in finals if tag in scalars} for run, scalars in runs.items()
    }
    summary = group_summary({g: [finals_by_run[r] for r in members] for g, members in sorted(groups.items())}, finals)
    table = {group: {"runs": groups[group], "metrics": summary[group]} for group in summary}
    write_json(out / "compare.json", table)
    write_text(out / "compare.md", _markdown(table, [t for t in finals if "_test/" in t] or finals))
    save_figure(
        curve_figure(runs, groups, [c for c in curves if any(c in s for s in runs.values())]), out / "compare.png"
    )
    return table


def curve_figure(runs: dict, groups: dict[str, list[str]], curves: list[str]) -> Figure:
    """One panel per metric; per group the mean over its runs at each logged step, with a band
    from the lowest to the highest run (steps every run logged)."""
    figure = Figure(figsize=(4.2 * max(1, len(curves)), 3.4), layout="constrained")
    for k, tag in enumerate(curves):
        ax = figure.add_subplot(1, max(1, len(curves)), k + 1)
        for i, (group, members) in enumerate(sorted(groups.items())):
            series = [dict(runs[r][tag]) for r in members if tag in runs[r]]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = np.array([[s[step] for step in steps] for s in series])
            ax.plot(steps, values.mean(0), color=f"C{i}", label=f"{group} (n={len(series)})")
            if len(series) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step")
        if k == 0:
            ax.legend(fontsize=7)
    return figure


def _markdown(table: dict, metrics: list[str]) -> str:
    labels = [m.split("/", 2)[-1].replace("/top1", "") for m in metrics]
    summary = {group: entry["metrics"] for group, entry in table.items()}
    counts = {group: str(len(entry["runs"])) for group, entry in table.items()}
    lines = ["Final value, mean [95% CI] over seeds (%).", ""] + markdown_table(summary, metrics, labels, counts)
    return "\n".join(lines) + "\n"
