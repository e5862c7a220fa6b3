"""One claim's verdict at one budget, and the report's verdicts under Holm's correction.

For a claim, its rows at one budget (the same fraction of each run: 1 is a run's end) give the
paired differences d_s = arm_s - baseline_s over the seeds whose runs of both arms finished, are
healthy (the protocol's control metric at or above its floor: below it a run "collapsed") and
have a finite value; every other seed is listed with the reason it was dropped. With the expected
direction as + and the margin m (0 for a superiority claim), the shifted differences sign * d + m
get a one-sided paired t test each way and, beside it, the exact sign-flip test; Holm's correction
across the report's claims (at each budget) adjusts the smaller of the two t p-values, compared
with alpha (so a false verdict in either direction has at most 2 alpha familywise probability, each
direction alpha), and

    untestable     the baseline or the arm is not competent (the lower 95% bound of its mean above
                   chance is not beyond the gate, on every competence metric), or < 2 seeds paired
    reproduced     adjusted p < alpha, the effect in the claimed direction (beyond -m)
    contradicted   adjusted p < alpha, the other way ("lower at this budget": a ShapesWorld budget
                   is never the paper's)
    ruled out      neither, and the 95% interval lies below the smallest effect of interest (a
                   superiority claim): the effect the claim is about is excluded (per claim: the
                   interval is not corrected for the other claims)
    underpowered   neither: the interval holds both no effect and the effect of interest; the
                   minimal detectable effect (80% power, n, observed spread, one-sided alpha
                   before Holm's correction, which asks for more) says how far off
"""

from __future__ import annotations

import math
from dataclasses import asdict
from fractions import Fraction
from typing import Any

import numpy as np

from analysis.claims.registry import Claim, Protocol
from analysis.stats import holm as holm_adjust
from analysis.stats import (
    mean_ci,
    metric_bounds,
    minimal_detectable_effect,
    paired_t_p,
    seeds_for_power,
    sign_flip_p,
)
from common.errors import UserError

VERDICTS = ("reproduced", "contradicted", "ruled out", "underpowered", "untestable")


def budget_of(row: dict) -> Fraction:
    """The share of its run a row was evaluated at (1: the run's end, also for rows without steps)."""
    step, final = row.get("step"), row.get("final_step")
    if step is None or not final:
        return Fraction(1)
    return Fraction(int(step), int(final))


def budgets(claim: Claim, rows: list[dict]) -> list[Fraction]:
    """The budgets at which both the arm and the baseline have rows, smallest first."""
    groups = [claim.arm] + ([claim.baseline] if claim.baseline else [])
    found = [
        {budget_of(r) for r in rows if r["group"] == g and r.get("status", "finished") == "finished"} for g in groups
    ]
    return sorted(set.intersection(*found)) if found else []


def at_budget(rows: list[dict], budget: Fraction) -> list[dict]:
    """The rows of one budget, and every unfinished run's row (dropped at every budget)."""
    return [r for r in rows if r.get("status", "finished") != "finished" or budget_of(r) == budget]


def verdict(claim: Claim, rows: list[dict], protocol: Protocol | None = None, health: dict | None = None) -> dict:
    """The paired effect, its tests, gates and verdict of one claim over rows of one budget, as
    the only claim of its report (``decide`` re-decides it under Holm's correction)."""
    protocol = protocol or Protocol()
    result = paired_effect(claim, rows, protocol, health if health is not None else protocol.health)
    return decide([result], protocol)[0]


def paired_effect(
    claim: Claim, rows: list[dict], protocol: Protocol, health: dict, curves: list[dict] | None = None
) -> dict:
    """The paired effect of ``claim`` over ``rows`` (one budget); ``curves``, every row of the
    experiment, give a ``matched_on`` claim its baseline curves."""
    dropped: dict[str, str] = {}

    def usable(group: str) -> dict[int, dict]:
        kept = {}
        for row in rows:
            if row["group"] != group:
                continue
            if row.get("status", "finished") != "finished":
                dropped[row["run"]] = row["status"] if row["status"] != "damaged" else "damaged run files"
            elif health and _below(row, health):
                value = row["metrics"][health["metric"]]
                dropped[row["run"]] = f"collapsed ({_short(health['metric'])} {_percent(value, health['metric'])})"
            elif row["seed"] is not None:
                kept[row["seed"]] = row
        return kept

    def value(row: dict, metric: str) -> float:
        return row["metrics"].get(metric, math.nan)

    arm = usable(claim.arm)
    base = usable(claim.baseline) if claim.baseline is not None else None
    if base is not None and claim.matched_on:
        base = {seed: _matched(row, arm.get(seed), claim, curves or rows, dropped) for seed, row in base.items()}
    bounds, base_bounds = metric_bounds(claim.metric), metric_bounds(claim.base_metric)
    diff_bounds: tuple[float, float] | None = None
    if base is not None:
        seeds = []
        for seed in sorted(set(arm) | set(base)):
            pair = [(arm.get(seed), claim.metric), (base.get(seed), claim.base_metric)]
            missing = [r["run"] for r, m in pair if r is not None and not math.isfinite(value(r, m))]
            if any(r is None for r, _ in pair):
                present = next(r for r, _ in pair if r is not None)
                dropped.setdefault(present["run"], "no paired run of the other arm")
            elif missing:
                for run in missing:
                    dropped.setdefault(run, "non-finite or missing value")
            else:
                seeds.append(seed)
        differences = [value(arm[s], claim.metric) - value(base[s], claim.base_metric) for s in seeds]
        if bounds is not None and base_bounds is not None:
            diff_bounds = (bounds[0] - base_bounds[1], bounds[1] - base_bounds[0])
        base_stats = mean_ci([value(base[s], claim.base_metric) for s in seeds], bounds=base_bounds)
    else:
        fixed = claim.baseline_value
        assert fixed is not None, "a claim without a baseline arm has a baseline_value (load_registry checks)"
        seeds = []
        for seed, row in sorted(arm.items()):
            if math.isfinite(value(row, claim.metric)):
                seeds.append(seed)
            else:
                dropped[row["run"]] = "non-finite or missing value"
        differences = [value(arm[s], claim.metric) - float(fixed) for s in seeds]
        if bounds is not None:
            diff_bounds = (bounds[0] - fixed, bounds[1] - fixed)
        base_stats = {"mean": fixed, "std": None, "ci95": None, "n": 0, "clipped": False}
    effect = mean_ci(differences, bounds=diff_bounds)
    result: dict[str, Any] = {
        "claim": asdict(claim),
        "seeds": seeds,
        "arm": mean_ci([value(arm[s], claim.metric) for s in seeds], bounds=bounds),
        "baseline": base_stats,
        "effect": effect,
        "differences": differences,
        "dropped": dict(sorted(dropped.items())),
        "competence": _competence(claim, protocol, seeds, arm, base),
    }
    if len(seeds) >= 2:
        shifted = [claim.sign * d + claim.margin for d in differences]
        p_claimed, p_against = paired_t_p(shifted)
        exact_claimed, exact_against = sign_flip_p(shifted)
        std = effect["std"] or 0.0
        # The distance the test must cover: the margin for a non-inferiority claim (shown when the
        # true effect is 0), the smallest effect of interest for a superiority claim.
        target = claim.margin if claim.margin else claim.smallest_effect
        result |= {
            "p": {"claimed": p_claimed, "against": p_against},
            "exact_p": {"claimed": exact_claimed, "against": exact_against},
            "mde": minimal_detectable_effect(std, len(seeds), protocol.alpha, protocol.power),
            "seeds_needed": seeds_for_power(target, std, protocol.alpha, protocol.power) if target else None,
        }
    return result


def _matched(base: dict, arm: dict | None, claim: Claim, curves: list[dict], dropped: dict[str, str]) -> dict:
    """The baseline's metric where its run reached the arm's value of ``matched_on`` (CyCLIP's
    consistency at CLIP's consistency for the same zero-shot accuracy): linear interpolation
    along the baseline run's rows at every evaluated step; NaN outside the range they span."""
    if arm is None:
        return base
    assert claim.matched_on is not None, "called for the claims that compare at matched values"
    points = sorted(
        (r["metrics"][claim.matched_on], r["metrics"][claim.base_metric])
        for r in curves
        if r["run"] == base["run"] and r.get("status", "finished") == "finished"
        and math.isfinite(r["metrics"].get(claim.matched_on, math.nan))
        and math.isfinite(r["metrics"].get(claim.base_metric, math.nan))
    )  # fmt: skip
    target = arm["metrics"].get(claim.matched_on, math.nan)
    value = math.nan
    if len(points) >= 2 and math.isfinite(target) and points[0][0] <= target <= points[-1][0]:
        value = float(np.interp(target, [x for x, _ in points], [y for _, y in points]))
    else:
        dropped[base["run"]] = f"no point of its curve at the arm's {_short(claim.matched_on)}"
    return base | {"metrics": base["metrics"] | {claim.base_metric: value}}


def _below(row: dict, health: dict) -> bool:
    value = row["metrics"].get(health["metric"])
    return value is not None and math.isfinite(value) and value < health["floor"]


def _competence(
    claim: Claim, protocol: Protocol, seeds: list[int], arm: dict[int, dict], base: dict[int, dict] | None
) -> dict:
    """{group: [{metric, chance, mean, lower, competent}]}: each group's paired seeds against the
    chance level of each competence metric (lower: the 95% lower bound of mean(metric - chance))."""
    groups = {claim.arm: (arm, False)} | ({claim.baseline: (base, True)} if base is not None and claim.baseline else {})
    found: dict[str, list[dict]] = {}
    for group, (runs, is_baseline) in groups.items():
        metrics = claim.competence_metrics(protocol, baseline=is_baseline)
        unknown = [m for m in metrics if m not in protocol.chance]
        if unknown:
            raise UserError(
                f"claims: {claim.id}: competence metric(s) {', '.join(unknown)} have no chance level in protocol.chance"
            )
        for metric in metrics:
            chance = protocol.chance[metric]
            values = [runs[s]["metrics"].get(metric, math.nan) for s in seeds]
            bounds = metric_bounds(metric)
            above = mean_ci([v - chance for v in values], bounds=bounds and (bounds[0] - chance, bounds[1] - chance))
            lower = None if above["ci95"] is None else above["ci95"][0]
            found.setdefault(group, []).append({
                "metric": metric, "chance": chance, "mean": mean_ci(values)["mean"], "lower": lower,
                "competent": lower is not None and lower > protocol.gate, "gate": protocol.gate,
            })  # fmt: skip
    return found


def decide(results: list[dict], protocol: Protocol) -> list[dict]:
    """Each result's verdict and words, Holm's correction taken across the testable ones."""
    testable = [r for r in results if "p" in r and not _incompetent(r)]
    adjusted = holm_adjust([min(r["p"].values()) for r in testable])
    for r, p in zip(testable, adjusted, strict=True):
        r["adjusted_p"] = p
    for r in results:
        r["verdict"], r["words"] = _verdict(r, protocol)
    return results


def _incompetent(result: dict, short: bool = False) -> list[str]:
    """Each group not shown competent, in words (``short``: for the README's table)."""
    failing = []
    for group, entries in result["competence"].items():
        for e in entries:
            if e["competent"]:
                continue
            mean, chance = _percent(e["mean"], e["metric"]), _percent(e["chance"], e["metric"])
            if short and e["mean"] is not None and e["mean"] - e["chance"] > protocol_gate(result):
                failing.append(
                    f"{group} not shown above chance on {_short(e['metric'])} with {len(result['seeds'])} seeds"
                )
                continue
            if short:
                failing.append(f"{group} {mean} on {_short(e['metric'])} (chance {chance})")
                continue
            lower = "" if e["lower"] is None else f", 95% lower bound {_percent(e['chance'] + e['lower'], e['metric'])}"
            failing.append(f"{group} not above chance on {_short(e['metric'])}: {mean}{lower} vs chance {chance}")
    return failing


def protocol_gate(result: dict) -> float:
    return next((e["gate"] for entries in result["competence"].values() for e in entries), 0.0)


def _verdict(result: dict, protocol: Protocol) -> tuple[str, str]:
    claim = Claim(**result["claim"])
    failing = _incompetent(result)
    if len(result["seeds"]) < 2:
        reasons = sorted({why.split(" (")[0] for why in result["dropped"].values()})
        because = f" ({len(result['dropped'])} runs dropped: {', '.join(reasons)})" if result["dropped"] else ""
        return "untestable", f"untestable: {len(result['seeds'])} paired seed(s){because}"
    if failing:
        gate = f"gate: 95% lower bound > chance + {_percent(protocol.gate, claim.metric, points=True)}"
        result["short_words"] = f"untestable: {'; '.join(_incompetent(result, short=True))}"
        return "untestable", f"untestable: {'; '.join(failing)} ({gate})"
    p, scale = result["p"], _scale(claim.metric)
    if result["adjusted_p"] < protocol.alpha:
        if p["claimed"] <= p["against"]:
            return "reproduced", "reproduced at this budget"
        if claim.margin:
            return "contradicted", f"worse by more than the {scale * claim.margin:g}-point margin at this budget"
        return "contradicted", f"{'lower' if claim.sign > 0 else 'higher'} at this budget"
    low, high = sorted(claim.sign * bound for bound in result["effect"]["ci95"])
    unit = " points" if scale == 100.0 else ""
    paper = "" if claim.paper_effect is None else f"; paper: {scale * claim.paper_effect:+.3g}{unit}"
    if not claim.margin and high < claim.smallest_effect:
        return (
            "ruled out",
            f"effect of interest ruled out (interval below {scale * claim.smallest_effect:+.3g}{unit}{paper})",
        )
    return "underpowered", f"underpowered (detectable before Holm: {scale * result['mde']:.3g}{unit}{paper})"


def _scale(metric: str) -> float:
    """Fractions are shown in % (differences in points), everything else as it is."""
    return 100.0 if metric_bounds(metric) == (0.0, 1.0) else 1.0


def _percent(value: float | None, metric: str, points: bool = False) -> str:
    if value is None:
        return "-"
    if _scale(metric) == 100.0:
        return f"{100 * value:.1f}{' points' if points else '%'}"
    return f"{value:.3g}"


def _short(metric: str) -> str:
    name = metric.replace("zeroshot/shapesworld_test/", "").replace("/top1", "")
    return name.replace("probes/shapesworld/", "").replace("/acc", "")
