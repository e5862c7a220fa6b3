"""A grid's ``tune:`` section: each group's value of one key (its learning rate) chosen on the
validation set before the group's final seeds run::

    tune:
      key: model.lr
      values: [3.0e-4, 1.0e-3, 3.0e-3]
      seeds: [100, 101]                           # seeds of their own, never the final ones
      metric: zeroshot/shapesworld_val/shape/top1  # a validation metric; higher is better

For every group of the grid (every combination of its axes: each arm, each batch size) and every
value, one run per tuning seed, in ``runs/<grid>/tune/<key><value>-<run name>/``. Tuning runs never
evaluate the test set (``test_after_fit false``, ``validate_after_fit true``), and the metric must be
a validation one, so the choice cannot read a test metric. The group's value is the one with the
highest mean metric over the tuning seeds that finished (ties: the first listed); the choices go
to ``runs/<grid>/tuning.json`` and every final run of the group takes its group's value. A final run that finished is not run again if a later
tuning changes its group's value: delete it to re-run it at the new value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from common.errors import UserError
from common.files import write_json
from experiments.grid.spec import Grid, Run, _fill, make_run, short

TUNE_ARGS = ["--test_after_fit", "false", "--validate_after_fit", "true", "--eval_steps", "[]"]
CHOICES = "tuning.json"


def tuning_runs(grid: Grid) -> list[Run]:
    """The runs that choose each group's value: every group x value x tuning seed."""
    if grid.tune is None:
        return []
    tune, runs, seen = grid.tune, [], set()
    leaf = tune.key.rpartition(".")[2]
    for final in grid.runs:
        if final.group in seen:
            continue
        seen.add(final.group)
        for seed in tune.seeds:
            for value in tune.values:
                name = f"{leaf}{short(value)}-{_fill(grid.template, final.values | {'seed': seed}, Path(grid.name))}"
                run = make_run(name, seed, final.values, grid.configs, [], grid.directory / "tune")
                run.args += [
                    *grid.extra,
                    f"--{tune.key}",
                    json.dumps(value),
                    *TUNE_ARGS,
                ]  # as the finals: the value last
                run.values = final.values | {tune.key: value}
                runs.append(run)
    return runs


_Value = TypeVar("_Value")


def select(scores: Mapping[_Value, Sequence[float]]) -> _Value:
    """The value with the highest mean score over its tuning seeds; a value with a failed or
    non-finite run is not eligible (a rate that diverged on one seed is not judged on the other);
    ties: the first listed."""
    means = {value: _mean(values) for value, values in scores.items()}
    eligible = {value: means[value] for value, values in scores.items() if values and all(map(math.isfinite, values))}
    if not eligible:
        raise UserError(
            "every value had a tuning run that failed or logged a non-finite metric; nothing to choose from"
        )
    return max(eligible, key=lambda value: (eligible[value], -list(means).index(value)))


def choose(grid: Grid, runs: list[Run]) -> dict[str, dict]:
    """{group: {"value", "metric", "means", "seeds"}} from the finished tuning runs' validation metric."""
    assert grid.tune is not None
    tune, choices = grid.tune, {}
    by_group: dict[str, dict[str, list[float]]] = {}
    logged: set[str] = set()  # every validation metric the finished runs logged, to name a typo
    for run in runs:
        group = ", ".join(f"{k}={short(v)}" for k, v in run.values.items() if k != tune.key) or "all"
        value = json.dumps(run.values[tune.key])
        metrics = _metrics(run)
        logged |= {k for k in metrics if "_val/" in k}
        score = metrics.get(tune.metric)
        by_group.setdefault(group, {}).setdefault(value, []).append(
            float(score) if isinstance(score, (int, float)) else math.nan
        )
    if logged and tune.metric not in logged:
        raise UserError(
            f"grid {grid.name}: tune.metric {tune.metric} is logged by no tuning run; they log e.g. "
            f"{', '.join(sorted(logged)[:4])}"
        )
    for group, scores in by_group.items():
        try:
            chosen = select(scores)
        except UserError as error:
            raise UserError(
                f"grid {grid.name}: group {group}: {error} (see runs in {grid.directory / 'tune'})"
            ) from None
        choices[group] = {
            "key": tune.key,
            "value": json.loads(str(chosen)),
            "metric": tune.metric,
            "means": {value: _mean(values) for value, values in scores.items()},
            "seeds": tune.seeds,
        }
    # Grids sharing a folder (an experiment's extra arms) add their groups' choices to the file.
    path = grid.directory / CHOICES
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, earlier | choices)
    return choices


def apply_choices(grid: Grid, choices: dict[str, dict]) -> None:
    """Every final run of a group takes its group's chosen value (after its other arguments)."""
    for run in grid.runs:
        if run.group not in choices:
            raise UserError(f"grid {grid.name}: no tuned value for group {run.group}")
        choice = choices[run.group]
        run.args += [f"--{choice['key']}", json.dumps(choice["value"])]


def _metrics(run: Run) -> dict:
    """A finished tuning run's metrics.json ({} for a run that failed or whose file is damaged)."""
    path = run.directory / "metrics.json"
    if run.status()["status"] != "finished" or not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
