"""Statistics over seeds, in one place: the grid's results.md, ``analysis compare``, the
notebooks (through ``analysis.results.summarize``) and the claims all use these.

A metric's value over seeds is summarised by its mean, sample standard deviation and the
Student-t 95% confidence interval of the mean. Metrics that are fractions (accuracy, recall,
pointing-game hits: every name under zeroshot/, retrieval/, crosslingual/, linear_probe/, consistency/,
explain/, probes/.../acc) live in [0, 1], and so does their true mean: an interval that leaves
[0, 1] is clipped to it (the modality gap likewise to [0, 2]). Clipping never removes the true mean from the interval, so the
coverage stays at least 95%; a clipped bound is marked in tables (``†``) so a reader sees that
the t interval's symmetric width was cut. Text-probe similarities are cosines, in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from scipy import stats as scipy_stats

FRACTION_PREFIXES = (
    "zeroshot/", "retrieval/", "crosslingual/", "linear_probe/", "linear_probe_trunk/", "consistency/", "explain/"
)  # fmt: skip
CLIPPED_MARK = "†"
CLIPPED_NOTE = (
    f"{CLIPPED_MARK} the t interval was clipped to the range the metric cannot leave"
    " (a fraction: [0, 100]%; a modality gap: [0, 2])."
)


def metric_bounds(name: str) -> tuple[float, float] | None:
    """The range a metric's values (and so its mean) cannot leave, or None if unbounded."""
    if name.startswith(FRACTION_PREFIXES) or (name.startswith("probes/") and name.endswith("/acc")):
        return (0.0, 1.0)
    if name.startswith("probes/") and name.endswith("_similarity"):
        return (-1.0, 1.0)
    if name.startswith("geometry/") and name.endswith("modality_gap"):
        return (0.0, 2.0)  # the distance between two means of unit vectors
    return None


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound near 0 and 1, unlike p +- 2se).
    ``successes`` may be fractional (the pointing game splits a hit among tied maxima)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(
    values: Iterable[float | None], confidence: float = 0.95, bounds: tuple[float, float] | None = None
) -> dict:
    """Mean, sample std and the Student-t confidence interval of the mean over finite values.

    ``ci95`` is None for fewer than 2 values; with ``bounds`` the interval is clipped to them and
    ``clipped`` says whether that changed it.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0, "clipped": False}
    mean = sum(finite) / n
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": 1, "clipped": False}
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    clipped = False
    if bounds is not None:
        clipped = bool(low < bounds[0] or high > bounds[1])
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": std, "ci95": [low, high], "n": n, "clipped": clipped}


def format_estimate(stats: dict, scale: float = 100.0, digits: int = 1) -> str:
    """``"83.8 [74.9, 92.7]"``: the mean and its 95% interval (``†`` marks a clipped interval),
    ``"83.8 (n=1)"`` for one seed, ``"-"`` for none."""
    if stats["mean"] is None:
        return "-"
    mean = f"{scale * stats['mean']:.{digits}f}"
    if stats["ci95"] is None:
        return f"{mean} (n=1)"
    low, high = (f"{scale * bound:.{digits}f}" for bound in stats["ci95"])
    return f"{mean} [{low}, {high}]{CLIPPED_MARK if stats.get('clipped') else ''}"


def group_summary(groups: Mapping[str, Sequence[dict]], metrics: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{group: {metric: mean_ci}} from each group's per-run metric dicts (a run that lacks a
    metric, or has a non-number, does not count towards it); fractions are kept in [0, 1]."""
    return {
        group: {
            metric: mean_ci(
                (run.get(metric) for run in runs if isinstance(run.get(metric), (int, float))),
                bounds=metric_bounds(metric),
            )
            for metric in metrics
        }
        for group, runs in groups.items()
    }


def markdown_table(
    summary: dict[str, dict[str, dict]],
    metrics: Sequence[str],
    labels: Sequence[str] | None = None,
    counts: dict[str, str] | None = None,
) -> list[str]:
    """The lines of a markdown table: one row per group, one ``format_estimate`` cell per metric,
    an n column (``counts[group]``, default the most seeds any metric has), and the note on
    clipped intervals when one occurs."""
    labels = list(labels or metrics)
    lines = ["| group | n | " + " | ".join(labels) + " |", "| --- | ---: |" + " ---: |" * len(labels)]
    clipped = False
    for group, by_metric in summary.items():
        n = (counts or {}).get(group) or str(max((by_metric[m]["n"] for m in metrics), default=0))
        lines.append(f"| {group} | {n} | " + " | ".join(format_estimate(by_metric[m]) for m in metrics) + " |")
        clipped |= any(by_metric[m].get("clipped") for m in metrics)
    if clipped:
        lines += ["", CLIPPED_NOTE]
    return lines


# ---- tests of a paired effect (the claims' verdicts) -----------------------------------------
def paired_t_p(differences: Sequence[float]) -> tuple[float, float]:
    """One-sided p-values of the paired t test on ``differences``: (H1 mean > 0, H1 mean < 0).
    Needs 2 or more values; identical differences give 0 and 1 (or 1 and 0; 0.5 both when all 0)."""
    n = len(differences)
    if n < 2:
        raise ValueError("a paired t test needs at least 2 differences")
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    if std == 0.0:
        return (0.0, 1.0) if mean > 0 else (1.0, 0.0) if mean < 0 else (0.5, 0.5)
    t = mean / (std / math.sqrt(n))
    return float(scipy_stats.t.sf(t, n - 1)), float(scipy_stats.t.cdf(t, n - 1))


def sign_flip_p(differences: Sequence[float], exact_up_to: int = 16, draws: int = 200_000) -> tuple[float, float]:
    """One-sided p-values of the sign-flip permutation test of the mean of ``differences``
    (H1 mean > 0, H1 mean < 0): the share of the 2^n sign patterns whose mean is at least (at most)
    the observed one, the observed pattern included, so the smallest p is 1/2^n (1/64 for six
    seeds). Exact up to ``exact_up_to`` values; beyond, ``draws`` random patterns (seed 0) plus the
    observed one."""
    import numpy as np

    values = np.asarray(differences, dtype=np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("a sign-flip test needs at least 1 difference")
    if n <= exact_up_to:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.vstack([np.ones(n), np.random.default_rng(0).choice([-1.0, 1.0], size=(draws, n))])
    means = signs @ values / n
    observed, tolerance = values.mean(), 1e-12 * max(1.0, float(np.abs(values).max()))
    return float((means >= observed - tolerance).mean()), float((means <= observed + tolerance).mean())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the k-th smallest p times the
    number of hypotheses not yet rejected, made monotone and capped at 1. Rejecting where the
    adjusted p < alpha controls the family-wise error rate at alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_power(effect: float, std: float, n: int, alpha: float = 0.025) -> float:
    """Power of the one-sided paired t test at level ``alpha`` to detect a true mean difference
    ``effect`` (> 0) when the differences have standard deviation ``std``: P(T' > t_{1-alpha, n-1})
    with T' noncentral t, n - 1 degrees of freedom, noncentrality effect sqrt(n) / std."""
    if n < 2 or std <= 0:
        return math.nan
    critical = scipy_stats.t.ppf(1 - alpha, n - 1)
    return float(scipy_stats.nct.sf(critical, n - 1, effect * math.sqrt(n) / std))


def minimal_detectable_effect(std: float, n: int, alpha: float = 0.025, power: float = 0.8) -> float:
    """The smallest true mean difference the one-sided paired t test detects with ``power`` at
    ``alpha``, for n pairs whose differences have standard deviation ``std`` (noncentral t)."""
    if n < 2 or not std > 0:
        return math.nan
    from scipy.optimize import brentq

    high = std
    while paired_power(high, std, n, alpha) < power:
        high *= 2
    return float(brentq(lambda effect: paired_power(effect, std, n, alpha) - power, 0.0, high, xtol=1e-10 * std))


def seeds_for_power(
    effect: float, std: float, alpha: float = 0.025, power: float = 0.8, most: int = 10_000
) -> int | None:
    """The fewest pairs (>= 2) with which the one-sided paired t test detects ``effect`` with
    ``power`` at ``alpha`` (differences of standard deviation ``std``); None beyond ``most``."""
    if not (effect > 0 and std > 0):
        return None if not effect > 0 else 2
    n = 2
    while paired_power(effect, std, n, alpha) < power:
        n = n + 1 if n < 64 else int(n * 1.1)
        if n > most:
            return None
    return n
