"""The claims' figures: each experiment's own (its registry ``figure``: a line against an axis, or
bars per arm) at the runs' end, and its learning curves (the deciding metrics of its claims at
every budget: mean and 95% interval per group, each seed a dot)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from analysis.claims.registry import Claim, Experiment
from analysis.claims.verdicts import _below, _scale, budget_of
from analysis.stats import mean_ci, metric_bounds
from common.errors import UserError


def figure(experiment: Experiment, rows: list[dict]) -> Figure | None:
    """The experiment's figure as its registry entry describes it; None without one."""
    spec = experiment.figure
    if not spec:
        return None
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.get("status", "finished") != "finished" or budget_of(row) != 1:
            continue
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
    for label, group in (spec.get("lines") or {}).items():
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


def budget_figure(
    experiment: Experiment, claims: list[Claim], rows: list[dict], health: dict | None = None
) -> Figure | None:
    """The deciding metric of each of the experiment's claims against the training step, one line
    per group the claims compare (mean and 95% interval of the finished runs that did not collapse
    at that step, as the verdicts count them; each seed a dot); None when the runs were evaluated
    at their end only."""
    finished = [
        r for r in rows
        if r.get("status", "finished") == "finished" and r.get("step") is not None and not (health and _below(r, health))
    ]  # fmt: skip
    if len({budget_of(r) for r in finished}) < 2:
        return None
    panels = list(
        dict.fromkeys((m, g) for c in claims for m, g in ((c.metric, c.arm), (c.base_metric, c.baseline)) if g)
    )
    metrics = list(dict.fromkeys(m for m, _ in panels))
    fig = Figure(figsize=(4.2 * len(metrics), 3.4), layout="constrained")
    for k, metric in enumerate(metrics):
        ax, scale = fig.add_subplot(1, len(metrics), k + 1), _scale(metric)
        for i, group in enumerate(dict.fromkeys(g for m, g in panels if m == metric)):
            by_step: dict[int, list[float]] = {}
            for row in finished:
                value = row["metrics"].get(metric, math.nan)
                if row["group"] == group and math.isfinite(value):
                    by_step.setdefault(int(row["step"]), []).append(value)
            steps = sorted(by_step)
            if not steps:
                continue
            stats = [mean_ci(by_step[s], bounds=metric_bounds(metric)) for s in steps]
            means = [scale * s["mean"] for s in stats]
            low = [scale * (s["mean"] - (s["ci95"] or (s["mean"], 0))[0]) for s in stats]
            high = [scale * ((s["ci95"] or (0, s["mean"]))[1] - s["mean"]) for s in stats]
            ax.errorbar(steps, means, yerr=[low, high], color=f"C{i}", marker="o", capsize=3, label=group)
            for step in steps:
                ax.scatter(
                    [step] * len(by_step[step]), [scale * v for v in by_step[step]], color=f"C{i}", s=8, alpha=0.4
                )
        ax.set_xscale("log")
        ax.set_xlabel("training step (log)")
        ax.set_title(metric.replace("/shapesworld_test/", "/").replace("/shapesworld/", "/"), fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{experiment.id}: deciding metrics along training (mean, 95% CI, each seed)", fontsize=9)
    return fig
