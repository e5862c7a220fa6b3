"""Per-run values of a claim experiment: read from its runs (metrics.json, its history of earlier
steps, values computed from checkpoints) or from the committed per-run CSV.

A row is one run at one evaluated step: {"run", "group", "seed", "step", "final_step", "status",
"seconds", "metrics"}. A finished run gives a row for its final step and one for each earlier step
it evaluated (``eval_steps``: the steps of ``metrics.json``'s history whose weights were saved in
``checkpoints/eval/``; the history's other steps are validation passes during fit, a learning
curve, not budgets); a run that did not finish (failed,
still running, or whose metrics.json is damaged) gives one row with its status and no metrics, so
the verdicts can name it among the seeds they dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from analysis.results import split_run_name
from common.errors import UserError
from common.files import write_json

EVAL_WEIGHTS = Path("checkpoints") / "eval"  # where eval_steps saves a run's earlier weights (experiments.budgets)

STATUS = "grid_status.json"
TEST_PREFIXES = ("zeroshot/", "retrieval/", "crosslingual/", "geometry/", "benchmark/")  # the test metrics a run logs
ROW_KEYS = ("run", "group", "seed", "step", "final_step", "status", "seconds")
# Raise when the definition of a metric computed from checkpoints changes: every run's cached
# values (<run>/analysis/claims*.json) are then recomputed, not read back stale.
METRICS_VERSION = 2


def run_folders(folder: Path) -> list[Path]:
    """The runs of a grid's folder: its subfolders with a metrics.json or a grid status (the
    tuning runs live apart, in ``tune/``)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and ((p / "metrics.json").is_file() or (p / STATUS).is_file())
    )


def run_status(run: Path) -> tuple[str, float | None, dict | None]:
    """(status, seconds, metrics.json's content): "finished", "failed", "running", ... as the grid
    recorded it, or "damaged" when a finished run's metrics.json cannot be read."""
    status, seconds = "finished", None
    if (run / STATUS).is_file():
        try:
            recorded = json.loads((run / STATUS).read_text())
            status, seconds = str(recorded.get("status", "unknown")), recorded.get("seconds")
        except (OSError, json.JSONDecodeError):
            status = "damaged"
    if status != "finished":
        return status, seconds, None
    try:
        logged = json.loads((run / "metrics.json").read_text())
    except FileNotFoundError:
        return "unfinished", seconds, None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "damaged", seconds, None
    if not isinstance(logged, dict):
        return "damaged", seconds, None
    return status, seconds, logged


def runs_of(
    folder: Path, metrics: Iterable[str], groups: Iterable[str] | None = None, compute: bool = True
) -> list[dict]:
    """The rows of the runs under ``folder`` (only the ``groups`` given), with the requested
    metrics from metrics.json or, where a run did not log them, computed from its checkpoint of
    that step (cached in <run>/analysis/); every other test metric the run logged comes along
    (context for a reader of the per-run CSV). A non-finite value ("nan") stays NaN: missing."""
    wanted = list(dict.fromkeys(metrics))
    keep = None if groups is None else set(groups)
    rows: list[dict] = []
    for run in run_folders(folder):
        group, seed = split_run_name(run.name)
        if keep is not None and group not in keep:
            continue
        status, seconds, logged = run_status(run)
        base = {"run": run.name, "group": group, "seed": seed, "status": status, "seconds": seconds}
        if logged is None:
            rows.append(base | {"step": None, "final_step": None, "metrics": {}})
            continue
        final = logged.get("global_step")
        final = int(final) if isinstance(final, (int, float)) else None
        # The budgets are the eval_steps, whose weights were saved; a validation pass during fit
        # also leaves a history entry (a learning curve), which is not a budget.
        steps = {
            int(s): v
            for s, v in (logged.get("history") or {}).items()
            if str(s).isdigit() and isinstance(v, dict) and (run / EVAL_WEIGHTS / f"step={s}.ckpt").is_file()
        }
        for step, values in [*((s, v) for s, v in sorted(steps.items()) if s != final), (final, logged)]:
            found = _numbers(values, wanted)
            # What a run logs (its test metrics) cannot be made up later: missing stays missing.
            missing = [m for m in wanted if m not in found and not m.startswith(TEST_PREFIXES)]
            if missing and compute:
                found |= checkpoint_metrics(run, missing, None if step == final else step)
            rows.append(base | {"step": step, "final_step": final, "metrics": found})
    return rows


def _numbers(logged: dict, wanted: list[str]) -> dict[str, float]:
    context = sorted(k for k in logged if k.startswith(TEST_PREFIXES) and "_test/" in k)
    return {m: float(logged[m]) for m in [*wanted, *context] if _is_number(logged.get(m))}


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def checkpoint_metrics(run: Path, names: list[str], step: int | None = None) -> dict[str, float]:
    """Metrics no run logs, from the run's checkpoint (``step``: the one ``eval_steps`` saved at
    that step; None: last.ckpt): linear probes on the embeddings or the vision trunk
    (``linear_probe/shapesworld/<task>/top1``, ``linear_probe_trunk/...``), consistency scores
    (``consistency/shapesworld/...``), grounded probes (``probes/shapesworld/<probe>/acc``) and the
    explanations' pointing game (``explain/<method>/...``; NaN for a method the run's towers do not
    allow); cached per run and step."""
    suffix = "" if step is None else f"-step={step}"
    cache_path = run / "analysis" / f"claims{suffix}.json"
    checkpoint = run / "checkpoints" / ("last.ckpt" if step is None else f"eval/step={step}.ckpt")
    stat = checkpoint.stat() if checkpoint.is_file() else None
    stamp = f"{stat.st_mtime_ns}:{stat.st_size}:{METRICS_VERSION}" if stat is not None else None
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}  # a damaged cache is recomputed
    if stamp is not None and cache.pop("checkpoint", None) != stamp:  # another checkpoint (a re-run) or definition
        cache = {}
    cache.pop("checkpoint", None)  # kept when the checkpoint was deleted: its values still stand
    todo = [n for n in names if n not in cache]
    if todo:
        if not checkpoint.is_file():
            raise UserError(f"claims: {run} has no {checkpoint.relative_to(run)} to compute {', '.join(todo)} from")
        cache |= _compute(checkpoint, todo, run / "analysis" / (f"step={step}" if step is not None else ""))
        write_json(cache_path, cache | {"checkpoint": stamp})  # the checkpoint exists here
    unknown = [n for n in names if n not in cache]
    if unknown:
        raise UserError(
            f"claims: no run of {run.parent.name} logs {', '.join(unknown)}, and the analysis cannot compute it"
        )
    return {n: math.nan if cache[n] is None else float(cache[n]) for n in names}


def _compute(checkpoint: Path, todo: list[str], out: Path) -> dict[str, float]:
    from analysis import consistency, zeroshot
    from analysis.checkpoint import load_checkpoint
    from analysis.suite_specs import SuiteOptions, load_suites
    from datamodules.suites import ClassificationSuite

    computed: dict[str, float] = {}
    loaded = load_checkpoint(checkpoint)
    suites = [s for s in load_suites(["shapesworld"], loaded, SuiteOptions()) if isinstance(s, ClassificationSuite)]
    for kind in ("linear_probe", "linear_probe_trunk"):
        for suite in suites:
            if f"{kind}/{suite.name}/top1" in todo:
                probe = zeroshot.linear_probe(loaded, suite, trunk=kind == "linear_probe_trunk")
                computed |= zeroshot.metric_names([probe])
    if any(n.startswith("consistency/") for n in todo):
        computed |= consistency.suite_consistency(loaded, suites)
    if any(n.startswith("probes/") for n in todo):
        from analysis.probes import selection_probe
        from analysis.suite_specs import load_probe_suites

        for probe_suite in load_probe_suites(["shapesworld"], loaded, SuiteOptions()):
            if f"probes/{probe_suite.name}/acc" in todo:
                computed[f"probes/{probe_suite.name}/acc"] = selection_probe(loaded, probe_suite)["acc"]
    if any(n.startswith("explain/") for n in todo):
        from analysis.explain import METHODS, available_methods
        from analysis.explain.command import explain_pointing

        applicable = available_methods(loaded.model)
        if applicable:
            computed |= explain_pointing(loaded, out, methods=applicable)["metrics"]
        # A method the towers do not allow (relevance on a CNN) is missing for this run, not an error.
        not_applicable = set(METHODS) - set(applicable)
        computed |= {n: math.nan for n in todo if n.startswith("explain/") and n.split("/")[1] in not_applicable}
    return computed


# ---- the committed per-run CSV ---------------------------------------------------------------
def runs_csv(rows: list[dict], metrics: list[str]) -> str:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow([*ROW_KEYS, *metrics])
    for row in rows:
        fixed = ["" if row.get(key) is None else row[key] for key in ROW_KEYS]
        writer.writerow([*fixed, *(row["metrics"].get(m, "") for m in metrics)])
    return table.getvalue()


def read_runs_csv(path: Path) -> list[dict]:
    """Rows from a per-run CSV (older ones have no step, status or seconds column: their rows are
    finished runs at their final step). A cell that is not a number is an error naming the file,
    line and column: these files are read and edited by people."""
    rows = []
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or not {"run", "group", "seed"} <= set(reader.fieldnames):
            raise UserError(f"{path}: a per-run CSV starts with the columns run, group, seed")
        metrics = [c for c in reader.fieldnames if c not in ROW_KEYS]
        for line, record in enumerate(reader, start=2):
            number = partial(_cell_number, path, line, record)
            values = {m: number(m) for m in metrics}
            rows.append({
                "run": record["run"], "group": record["group"], "seed": number("seed", int),
                "step": number("step", int), "final_step": number("final_step", int),
                "status": (record.get("status") or "finished").strip(), "seconds": number("seconds"),
                "metrics": {m: v for m, v in values.items() if v is not None},
            })  # fmt: skip
    return rows


def _cell_number(path: Path, line: int, record: dict, column: str, cast: type = float) -> float | int | None:
    """One cell of a per-run CSV as a number; None when empty, a UserError naming the cell otherwise."""
    cell = (record.get(column) or "").strip()
    if not cell:
        return None
    try:
        return cast(float(cell)) if cast is int else float(cell)
    except ValueError:
        raise UserError(
            f"{path}: line {line}, column {column!r}: {cell!r} is not a number (leave the cell empty "
            "for a value the run did not log; nan for a non-finite one)"
        ) from None
