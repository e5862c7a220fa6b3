"""Verdicts on what papers claim: ``python -m analysis claims SOURCE [--out docs/claims] [--plan]``.

A claim is data (``experiments/claims/claims.yaml``): a paper and what it says, the per-run metric
that decides it, two arms of a claim experiment (a grid whose arms are paired by seed: the same
seed gives both the same data order and initial towers) or one arm against a stated value, the
expected direction with an optional non-inferiority margin, the smallest effect of interest and
the paper's own effect. The registry's ``protocol`` holds the numbers every verdict follows: the
level, the power, the chance level of each metric, the competence gate and the run-health floor.

SOURCE is a folder of runs (``runs``: each experiment's runs in ``runs/<grid name>/<run>/``); metrics
a run did not log (linear probe, consistency) are computed from its checkpoint and cached in
``<run>/analysis/``. Each experiment's per-run values (every evaluated step) are written to
``OUT/runs/<experiment>.csv``, small enough to commit, with the learning rates its grid chose on
validation (``OUT/runs/<experiment>-tuning.json``); given a folder holding such files
(``docs/claims``) instead, the verdicts are recomputed from them without any run. Writes
``OUT/claims.md``, ``OUT/claims.json``, ``OUT/table.md`` (the README's table), each experiment's
figure ``OUT/<experiment>.png`` and its learning curves ``OUT/<experiment>-budgets.png``. ``--plan`` prints the seeds each claim needs.

``registry.py`` reads the registry, ``runs.py`` the per-run values, ``verdicts.py`` decides,
``report.py`` and ``figures.py`` write the tables and figures.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

from analysis.claims.figures import budget_figure, figure
from analysis.claims.registry import REGISTRY, REPOSITORY, Claim, Experiment, Protocol, load_registry
from analysis.claims.report import markdown, not_run_notes, plan, summary_table
from analysis.claims.runs import METRICS_VERSION, read_runs_csv, run_folders, run_status, runs_csv, runs_of
from analysis.claims.verdicts import VERDICTS, at_budget, budget_of, budgets, decide, paired_effect, verdict
from analysis.results import split_run_name
from common.errors import UserError
from common.files import save_figure, write_json, write_text

__all__ = [
    "METRICS_VERSION", "REGISTRY", "VERDICTS", "Claim", "Experiment", "Protocol", "claims", "load_registry",
    "read_runs_csv", "runs_csv", "runs_of", "verdict",
]  # fmt: skip


def claims(
    source: str | Path,
    out: str | Path = "docs/claims",
    registry: str | Path = REGISTRY,
    only: list[str] | None = None,
    show_plan: bool = False,
    readme: str | Path | None = None,
) -> dict:
    """Verdicts of every claim in the registry (or the ``only`` ids) from ``source`` into ``out``."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(
            f"claims: {source} is not a folder (a runs root such as runs/, or a folder of per-run CSVs such as docs/claims)"
        )
    if only and readme is not None:
        raise UserError("claims: --readme writes the table of every claim; drop --claim (or --readme)")
    protocol, experiments, all_claims = load_registry(registry)
    selected = [c for c in all_claims if not only or c.id in only]
    if only and len(selected) != len(set(only)):
        unknown = sorted(set(only) - {c.id for c in all_claims})
        raise UserError(
            f"claims: unknown claim id(s) {', '.join(unknown)}; known: {', '.join(c.id for c in all_claims)}"
        )
    missing: dict[str, str] = {}
    rows_by_experiment: dict[str, list[dict]] = {}
    tuning: dict[str, dict] = {}
    for experiment in dict.fromkeys(c.experiment for c in selected):
        spec = experiments[experiment]
        mine = [c for c in selected if c.experiment == experiment]
        rows = _experiment_rows(spec, mine, protocol, source, out, missing, tuning)
        if rows is None:
            continue
        rows_by_experiment[experiment] = rows
        budgets_fig = budget_figure(spec, mine, rows, _health(spec, protocol))
        for name, fig in ((experiment, figure(spec, rows)), (f"{experiment}-budgets", budgets_fig)):
            if fig is not None:
                save_figure(fig, out / f"{name}.png")

    results = []
    for claim in selected:
        rows = rows_by_experiment.get(claim.experiment)
        if rows is None:
            continue
        health = _health(experiments[claim.experiment], protocol)
        found = budgets(claim, rows) or [Fraction(1)]
        for budget in found:
            result = paired_effect(claim, at_budget(rows, budget), protocol, health, curves=rows)
            steps = [
                r["step"] for r in rows if r["group"] == claim.arm and r["step"] is not None and budget_of(r) == budget
            ]
            result |= {"budget": str(budget), "steps": int(statistics.median(steps)) if steps else None,
                       "largest": budget == found[-1]}  # fmt: skip
            results.append(result)
    for budget in {r["budget"] for r in results}:  # Holm across the claims read at the same share of their runs
        decide([r for r in results if r["budget"] == budget], protocol)
    final = [r for r in results if r["largest"]]
    for r in final:
        r["budgets"] = [
            {k: e[k] for k in ("budget", "steps", "verdict", "words", "effect", "seeds") if k in e}
            | {"adjusted_p": e.get("adjusted_p")}
            for e in results
            if e["claim"]["id"] == r["claim"]["id"]
        ]
    summary = {
        "protocol": asdict(protocol),
        "claims": final,
        "not_run": not_run_notes(experiments, missing),
        "tuning": tuning,
        "counts": {v: sum(r["verdict"] == v for r in final) for v in VERDICTS},
    }
    write_json(out / "claims.json", summary)
    write_text(out / "claims.md", markdown(results, protocol, experiments, missing, tuning))
    if not only:  # the README's table: every claim, or none
        table = summary_table(results, protocol, sorted(missing))
        write_text(out / "table.md", table)
        if readme is not None:
            write_text(readme, with_table(Path(readme), table))
    if show_plan:
        table = plan(results, rows_by_experiment, experiments)
        write_text(out / "plan.md", table)
        summary["plan"] = table
    return summary


def _experiment_rows(
    spec: Experiment,
    claims_of: list[Claim],
    protocol: Protocol,
    source: Path,
    out: Path,
    missing: dict[str, str],
    tuning: dict[str, dict],
) -> list[dict] | None:
    """The experiment's rows from its runs (writing its per-run CSV and tuning choices to ``out``)
    or from the committed CSV; None, with the reason in ``missing``, when neither exists."""
    health = _health(spec, protocol)
    metrics = list(dict.fromkeys(
        [m for c in claims_of for m in (c.metric, c.base_metric, *c.competence_metrics(protocol),
                                         *c.competence_metrics(protocol, baseline=True), c.matched_on) if m]
        + ([health["metric"]] if health else [])
        + ([spec.figure["metric"]] if "metric" in spec.figure else []) + list(spec.figure.get("metrics", []))
    ))  # fmt: skip
    folder = source / spec.grid_name(REPOSITORY)
    csv_name, tuning_name = f"{spec.id}.csv", f"{spec.id}-tuning.json"
    # Files committed earlier: in the source (`claims docs/claims`) or, when the runs of this
    # experiment are gone (runs/ is not kept), in the output folder being rewritten.
    committed = next((d / "runs" for d in (source, out) if (d / "runs" / csv_name).is_file()), source / "runs")
    groups = {g for c in claims_of for g in (c.arm, c.baseline) if g is not None}
    groups |= set(spec.figure.get("arms", [])) | set((spec.figure.get("lines") or {}).values())
    groups |= {g for series in (spec.figure.get("series") or {}).values() for g in series}
    # A grid folder may be shared with other experiments (claims-variants): it stands for this
    # experiment only once every group this experiment needs has a finished run there.
    finished = {split_run_name(run.name)[0] for run in run_folders(folder) if run_status(run)[0] == "finished"}
    if groups <= finished:
        rows = runs_of(folder, metrics, groups)
        columns = metrics + sorted({m for row in rows for m in row["metrics"]} - set(metrics))
        write_text(out / "runs" / csv_name, runs_csv(rows, columns))
        if (folder / "tuning.json").is_file():
            write_text(out / "runs" / tuning_name, (folder / "tuning.json").read_text())
    elif (committed / csv_name).is_file():
        rows = read_runs_csv(committed / csv_name)
        for name in (csv_name, tuning_name):
            original, copy = committed / name, out / "runs" / name
            if original.is_file() and (not copy.exists() or copy.resolve() != original.resolve()):
                write_text(copy, original.read_bytes().decode())  # bytes: the csv module's line ends kept
    else:
        missing[spec.id] = (
            f"no finished runs of {', '.join(sorted(groups - finished))}: python -m experiments grid {spec.grid}"
        )
        return None
    choices = out / "runs" / tuning_name
    if choices.is_file():
        try:
            tuning[spec.id] = json.loads(choices.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{choices}: not valid JSON ({error.msg}, line {error.lineno})") from None
    return rows


def _health(experiment: Experiment, protocol: Protocol) -> dict:
    """The experiment's run-health rule: its own (``{}``: none, for an untrained arm by design) or the protocol's."""
    return experiment.health if experiment.health is not None else protocol.health


TABLE_START, TABLE_END = (
    "<!-- claims table: python -m analysis claims ... --readme README.md -->",
    "<!-- end of claims table -->",
)


def with_table(readme: Path, table: str) -> str:
    """The README's text with the table between its two markers replaced."""
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise UserError(f"{readme}: no claims table markers ({TABLE_START} ... {TABLE_END}) to write the table between")
    head, rest = text.split(TABLE_START, 1)
    return head + TABLE_START + "\n" + table + rest[rest.index(TABLE_END) :]
