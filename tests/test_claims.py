"""The claims layer: CyCLIP's consistency score against a loop reference, verdicts on synthetic
paired results (each verdict), the registry's checks, and every claim grid parses as a run would."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from analysis.claims import Claim, Protocol, claims, load_registry, read_runs_csv, runs_csv, runs_of, verdict
from analysis.claims.verdicts import budgets
from analysis.consistency import consistency_scores, knn_labels
from analysis.results import split_run_name
from analysis.stats import holm, minimal_detectable_effect, seeds_for_power, sign_flip_p
from common.errors import UserError

from helpers import REPO


def _official_knn(test: torch.Tensor, train: torch.Tensor, train_labels: torch.Tensor, k: int) -> list[int]:
    """CyCLIP's utils/consistency.py (commit e9b05a4), row by row: majority of the k nearest, a
    tie retaken over one neighbour fewer until one label wins."""
    out = []
    for row in test:
        order = sorted(range(len(train)), key=lambda j: -float(row @ train[j]))[:k]
        nearest = [int(train_labels[j]) for j in order]
        temp = k
        while True:
            counts = {label: nearest[:temp].count(label) for label in set(nearest[:temp])}
            best = max(counts.values())
            if sum(c == best for c in counts.values()) == 1:
                break
            temp -= 1
        out.append(max(counts, key=counts.get))
    return out


def test_knn_labels_and_consistency_match_the_official_loop() -> None:
    torch.manual_seed(0)
    train, test = F.normalize(torch.randn(40, 6), dim=-1), F.normalize(torch.randn(25, 6), dim=-1)
    train_labels = torch.randint(0, 3, (40,))  # 3 classes: ties happen at k = 2, 4, ...
    got = knn_labels(test, train, train_labels, ks=(1, 3, 4, 10), chunk=7)
    for k, labels in got.items():
        assert labels.tolist() == _official_knn(test, train, train_labels, k), k
    zeroshot = torch.randint(0, 3, (25,))
    truth = torch.randint(0, 3, (25,))
    scores = consistency_scores(zeroshot, got, truth)
    for k, labels in got.items():
        assert scores[f"top{k}"] == pytest.approx(sum(int(a == b) for a, b in zip(zeroshot, labels, strict=True)) / 25)
        assert scores[f"knn{k}_accuracy"] == pytest.approx(
            sum(int(a == b) for a, b in zip(truth, labels, strict=True)) / 25
        )
    with pytest.raises(UserError, match="at least 10 reference images"):
        knn_labels(test, train[:5], train_labels[:5], ks=(10,))


def _claim(**kwargs) -> Claim:
    fields = {"id": "c", "experiment": "e", "paper": "p", "says": "s", "metric": "zeroshot/x/top1", "arm": "arm"}
    return Claim(**(fields | kwargs))


def _rows(metric: str = "zeroshot/x/top1", **groups: list[float]) -> list[dict]:
    return [
        {"run": f"{g}-s{s}", "group": g, "seed": s, "status": "finished", "metrics": {metric: v}}
        for g, values in groups.items()
        for s, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("arm", "base", "expect", "margin", "expected"),
    [
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "reproduced"),
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "contradicted"),
        ([0.50, 0.56, 0.45, 0.53, 0.49], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "underpowered"),
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.0, "reproduced"),
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.0, "contradicted"),
        ([0.51, 0.52, 0.52, 0.51, 0.52], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "reproduced"),  # not higher by 2
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "contradicted"),
        ([0.52, 0.50, 0.55, 0.53, 0.51], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "underpowered"),
        ([0.50, 0.50, 0.51, 0.49, 0.50], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "reproduced"),  # non-inferior
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "contradicted"),
        ([0.47, 0.50, 0.48, 0.51, 0.49], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "underpowered"),
    ],
)
def test_each_verdict_on_synthetic_paired_results(arm, base, expect, margin, expected) -> None:
    rows = [
        {"run": f"{g}-s{s}", "group": g, "seed": s, "metrics": {"zeroshot/x/top1": v}}
        for g, values in (("arm", arm), ("clip", base))
        for s, v in enumerate(values)
    ]
    result = verdict(_claim(baseline="clip", expect=expect, margin=margin), rows)
    assert result["verdict"] == expected
    assert result["seeds"] == [0, 1, 2, 3, 4]
    assert result["effect"]["mean"] == pytest.approx(sum(arm) / 5 - sum(base) / 5)


def test_differences_are_paired_by_seed_and_unpaired_seeds_are_left_out() -> None:
    rows = [
        {"run": "arm-s0", "group": "arm", "seed": 0, "metrics": {"zeroshot/x/top1": 0.9}},
        {"run": "arm-s1", "group": "arm", "seed": 1, "metrics": {"zeroshot/x/top1": 0.5}},
        {"run": "arm-s7", "group": "arm", "seed": 7, "metrics": {"zeroshot/x/top1": 0.1}},  # no baseline run
        {"run": "clip-s0", "group": "clip", "seed": 0, "metrics": {"zeroshot/x/top1": 0.8}},
        {"run": "clip-s1", "group": "clip", "seed": 1, "metrics": {"zeroshot/x/top1": 0.4}},
    ]
    result = verdict(_claim(baseline="clip", expect="greater"), rows)
    assert result["seeds"] == [0, 1] and result["differences"] == pytest.approx([0.1, 0.1])
    one = verdict(_claim(baseline="clip", expect="greater"), rows[:1] + rows[3:4])
    assert one["verdict"] == "untestable" and one["effect"]["ci95"] is None
    assert one["words"].startswith("untestable: 1 paired seed")


def test_a_non_finite_value_is_missing_and_its_seed_unpaired() -> None:
    values = {"arm": [0.6, 0.7, float("nan"), 0.65], "clip": [0.5, 0.55, 0.5, float("nan")]}
    rows = [
        {"run": f"{g}-s{s}", "group": g, "seed": s, "metrics": {"zeroshot/x/top1": v}}
        for g, vs in values.items()
        for s, v in enumerate(vs)
    ]
    result = verdict(_claim(baseline="clip", expect="greater"), rows)
    assert result["seeds"] == [0, 1] and result["differences"] == pytest.approx([0.1, 0.15])
    assert result["arm"]["n"] == result["baseline"]["n"] == result["effect"]["n"] == 2
    assert result["arm"]["mean"] - result["baseline"]["mean"] == pytest.approx(result["effect"]["mean"])


def test_a_baseline_metric_pairs_two_metrics_by_seed() -> None:
    """FILIP's alignment against CLIP's relevance: each arm's own metric, paired by seed; the other
    method's value in the same rows (CLIP's alignment, FILIP's relevance) is not read."""
    rows = [
        {"run": f"{g}-s{s}", "group": g, "seed": s,
         "metrics": {"explain/alignment/pointing": a, "explain/relevance/pointing": r}}
        for g, values in (("filip", [(0.6, 0.0), (0.7, 0.0), (0.65, 0.0)]), ("clip", [(0.9, 0.3), (0.9, 0.35), (0.9, 0.4)]))
        for s, (a, r) in enumerate(values)
    ]  # fmt: skip
    claim = _claim(metric="explain/alignment/pointing", arm="filip", baseline="clip", expect="greater")
    assert verdict(claim, rows)["verdict"] == "contradicted"  # alignment against alignment
    paired = verdict(dataclasses.replace(claim, baseline_metric="explain/relevance/pointing"), rows)
    assert paired["verdict"] == "reproduced" and paired["differences"] == pytest.approx([0.3, 0.35, 0.25])
    assert paired["baseline"]["mean"] == pytest.approx(0.35)


def test_a_claim_against_a_stated_value_and_intervals_that_stay_in_range() -> None:
    rows = [
        {"run": f"init-s{s}", "group": "init", "seed": s, "metrics": {"geometry/x/modality_gap": v}}
        for s, v in enumerate([1.2, 1.3, 1.25])
    ]
    result = verdict(
        _claim(metric="geometry/x/modality_gap", arm="init", baseline_value=0.0632, expect="greater"), rows
    )
    assert result["verdict"] == "reproduced" and result["effect"]["mean"] == pytest.approx(1.25 - 0.0632)
    near_one = [
        {"run": f"a-s{s}", "group": "a", "seed": s, "metrics": {"zeroshot/x/top1": v}}
        for s, v in enumerate([1.0, 1.0, 0.7])
    ]
    near_one += [
        {"run": f"b-s{s}", "group": "b", "seed": s, "metrics": {"zeroshot/x/top1": v}}
        for s, v in enumerate([0.0, 0.0, 0.6])
    ]
    bounded = verdict(_claim(arm="a", baseline="b", expect="greater"), near_one)
    assert bounded["effect"]["ci95"][1] <= 1.0 and bounded["effect"]["clipped"]


def test_the_registry_is_checked(tmp_path: Path) -> None:
    _, experiments, all_claims = load_registry()
    assert {c.experiment for c in all_claims} <= set(experiments) and len(all_claims) >= 5
    bad = {"experiments": {"e": {"grid": "g.yaml"}}, "claims": [{"id": "x", "experiment": "e", "paper": "p", "says": "s",
           "metric": "m", "arm": "a", "expect": "bigger", "baseline": "b", "smallest_effect": 0.05}]}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="expect is 'greater' or 'less'"):
        load_registry(tmp_path / "r.yaml")
    bad["claims"][0] |= {"expect": "greater", "baseline_value": 0.1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="exactly one of 'baseline'"):
        load_registry(tmp_path / "r.yaml")
    bad["claims"][0] |= {"baseline_metric": "m2"}
    del bad["claims"][0]["baseline"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="baseline_metric names the metric of a baseline arm"):
        load_registry(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("experiments:\n  e:\n    wall_time: 5 min; curves: docs/x.png\n")
    with pytest.raises(UserError, match=r"r.yaml: line 3, column \d+: not valid YAML \(mapping values are not allowed"):
        load_registry(tmp_path / "r.yaml")


def test_verdicts_from_committed_per_run_csvs(tmp_path: Path) -> None:
    """`python -m analysis claims docs/claims`: no runs, only the committed CSVs."""
    source = tmp_path / "committed"
    metric = "geometry/shapesworld_test/modality_gap"
    rows = [{"run": f"{g}-s{s}", "group": g, "seed": s, "metrics": {metric: v + 0.01 * s}}
            for g, v in (("init", 1.2), ("t0.01", 0.9), ("t0.033", 0.7), ("t0.1", 0.5), ("t1", 0.3)) for s in range(5)]  # fmt: skip
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "gap-temperature.csv").write_text(runs_csv(rows, [metric]))
    blank = {"step": None, "final_step": None, "status": "finished", "seconds": None}
    assert read_runs_csv(source / "runs" / "gap-temperature.csv") == [r | blank for r in rows]
    summary = claims(source, tmp_path / "out", only=["gap-grows-as-temperature-falls", "gap-exists-at-init"])
    assert [r["verdict"] for r in summary["claims"]] == ["reproduced", "reproduced"]
    assert (tmp_path / "out" / "gap-temperature.png").is_file()
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| **reproduced at this budget** |" in table and "t0.01 vs t1" in table
    with pytest.raises(UserError, match="unknown claim id"):
        claims(source, tmp_path / "out", only=["no-such-claim"])


def test_an_experiment_whose_runs_are_gone_keeps_its_committed_csv_in_the_output(tmp_path: Path) -> None:
    """`claims runs --out docs/claims` after a fresh checkout (runs/ is not kept): experiments run
    earlier keep their committed CSVs, byte for byte, and their verdicts."""
    metric = "geometry/shapesworld_test/modality_gap"
    rows = [{"run": f"{g}-s{s}", "group": g, "seed": s, "metrics": {metric: v + 0.01 * s}}
            for g, v in (("init", 1.2), ("t0.01", 0.9), ("t0.033", 0.7), ("t0.1", 0.5), ("t1", 0.3)) for s in range(5)]  # fmt: skip
    committed = tmp_path / "out" / "runs" / "gap-temperature.csv"
    committed.parent.mkdir(parents=True)
    committed.write_text(runs_csv(rows, [metric]))
    before = committed.read_bytes()
    (tmp_path / "runs").mkdir()
    summary = claims(tmp_path / "runs", tmp_path / "out", only=["gap-grows-as-temperature-falls"])
    assert [r["verdict"] for r in summary["claims"]] == ["reproduced"] and committed.read_bytes() == before


def test_a_shared_grid_folder_stands_for_an_experiment_only_with_all_its_arms(tmp_path: Path) -> None:
    """claims-variants holds CLIP's runs for three experiments: without CyCLIP's runs the
    cyclip experiment is 'not run' (its committed CSV, if any, is used), not a CLIP-only table."""
    metric = "zeroshot/shapesworld_test/shape/top1"
    for group in ("clip", "mmd", "adversarial"):
        for seed in range(2):
            run = tmp_path / "runs" / "claims-variants" / f"{group}-s{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({metric: 0.5, "geometry/shapesworld_test/modality_gap": 0.8}))
    unfinished = tmp_path / "runs" / "claims-variants" / "cyclip-s0"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({metric: 0.5}))
    (unfinished / "grid_status.json").write_text(json.dumps({"status": "running"}))
    summary = claims(tmp_path / "runs", tmp_path / "out", only=["mmd-keeps-zero-shot", "cyclip-keeps-zero-shot"])
    assert [r["claim"]["id"] for r in summary["claims"]] == ["mmd-keeps-zero-shot"]
    assert "cyclip" in summary["not_run"]["cyclip-consistency"]
    assert not (tmp_path / "out" / "runs" / "cyclip-consistency.csv").exists()


# ---- the verdict protocol: gates, health, Holm, exact p, power --------------------------------
SHAPE = "zeroshot/shapesworld_test/shape/top1"
COLOR = "zeroshot/shapesworld_test/color/top1"
PROTOCOL = Protocol(chance={SHAPE: 0.125}, gate=0.10, health={"metric": COLOR, "floor": 0.5})


def _runs(**groups: list[tuple[float, float]]) -> list[dict]:
    """Rows with (shape, colour) per seed."""
    return [
        {"run": f"{g}-s{s}", "group": g, "seed": s, "status": "finished", "metrics": {SHAPE: a, COLOR: c}}
        for g, values in groups.items()
        for s, (a, c) in enumerate(values)
    ]


def test_a_baseline_at_chance_makes_the_verdict_untestable() -> None:
    """SigLIP's batch-16 case: both arms near 12.5%; a clear paired difference decides nothing."""
    rows = _runs(arm=[(0.15 + 0.01 * s, 1.0) for s in range(6)], clip=[(0.13 + 0.005 * s, 1.0) for s in range(6)])
    result = verdict(_claim(metric=SHAPE, baseline="clip", expect="greater"), rows, PROTOCOL)
    assert (
        result["verdict"] == "untestable"
        and "clip not above chance" in result["words"]
        and "arm not above chance" in result["words"]
    )
    assert result["p"]["claimed"] < 1e-3  # the paired test alone would have said "reproduced"
    competent = _runs(arm=[(0.60 + 0.01 * s, 1.0) for s in range(6)], clip=[(0.45 + 0.01 * s, 1.0) for s in range(6)])
    assert (
        verdict(_claim(metric=SHAPE, baseline="clip", expect="greater"), competent, PROTOCOL)["verdict"] == "reproduced"
    )
    # An arm that never learned contradicts nothing: a failed run, not a worse objective.
    failed_arm = _runs(arm=[(0.14, 1.0)] * 6, clip=[(0.55 + 0.01 * s, 1.0) for s in range(6)])
    result = verdict(_claim(metric=SHAPE, baseline="clip", expect="greater", margin=0.02), failed_arm, PROTOCOL)
    assert result["verdict"] == "untestable" and "arm not above chance on shape: 14.0%" in result["words"]


def test_a_collapsed_seed_is_dropped_and_named() -> None:
    rows = _runs(arm=[(0.60 + 0.01 * s, 1.0) for s in range(6)], clip=[(0.45 + 0.01 * s, 1.0) for s in range(6)])
    rows[2]["metrics"][COLOR] = 0.3  # arm-s2 never learned even colour
    rows.append({"run": "clip-s6", "group": "clip", "seed": 6, "status": "failed", "metrics": {}})
    result = verdict(_claim(metric=SHAPE, baseline="clip", expect="greater"), rows, PROTOCOL)
    assert result["seeds"] == [0, 1, 3, 4, 5]
    assert result["dropped"] == {"arm-s2": "collapsed (color 30.0%)", "clip-s2": "no paired run of the other arm",
                                 "clip-s6": "failed"}  # fmt: skip


def test_holm_on_a_hand_computed_example() -> None:
    """Four p-values; by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06,
    0.04, made monotone: 0.02, 0.03, 0.06, 0.06, back in the given order."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9]) and holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_holm_across_a_report_turns_a_lone_verdict_undecided() -> None:
    """One claim decided alone (one-sided p 0.016) is no longer decided beside a second claim (p 0.44):
    Holm doubles the smaller p (0.032 > 0.025) and the larger keeps its own."""
    from analysis.claims.verdicts import decide, paired_effect

    strong, weak = [0.035, 0.01, 0.05, 0.0, 0.04, 0.01], [0.03, -0.02, 0.01, -0.04, 0.02, -0.01]
    rows = _rows(arm=[0.5 + d for d in strong], weak=[0.5 + d for d in weak], clip=[0.5] * 6)
    alone = verdict(_claim(baseline="clip", expect="greater", smallest_effect=0.02), rows)
    assert alone["verdict"] == "reproduced" and alone["adjusted_p"] == pytest.approx(0.01604, abs=1e-5)
    both = [
        paired_effect(
            _claim(id=g, arm=g, baseline="clip", expect="greater", smallest_effect=0.02), rows, Protocol(), {}
        )
        for g in ("arm", "weak")
    ]
    decide(both, Protocol())
    assert [r["adjusted_p"] for r in both] == pytest.approx([2 * 0.016044, 0.44156], abs=1e-5)
    assert [r["verdict"] for r in both] == ["underpowered", "underpowered"]


def test_sign_flip_p_of_six_positive_differences_is_one_in_64() -> None:
    claimed, against = sign_flip_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert claimed == pytest.approx(1 / 64) and against == pytest.approx(1.0)
    assert sign_flip_p([1.0, -1.0])[0] == pytest.approx(3 / 4)  # patterns ++, +-, -+, -- -> means 0, 1, -1, 0 ... >= 0
    five = verdict(_claim(baseline="clip", expect="greater"), _rows(arm=[0.6] * 5, clip=[0.5, 0.51, 0.5, 0.52, 0.5]))
    assert five["exact_p"]["claimed"] == pytest.approx(1 / 32)  # five seeds can never reach 0.025 exactly


def test_the_minimal_detectable_effect_has_the_power_it_claims() -> None:
    """At the MDE, a simulated one-sided paired t test at 0.025 rejects 80% of the time."""
    import numpy as np
    from scipy import stats as scipy_stats

    n, std = 6, 0.05
    mde = minimal_detectable_effect(std, n, alpha=0.025, power=0.8)
    critical = scipy_stats.t.ppf(0.975, n - 1)
    assert scipy_stats.nct.sf(critical, n - 1, mde * np.sqrt(n) / std) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(0)
    samples = rng.normal(mde, std, size=(40_000, n))
    t = samples.mean(1) / (samples.std(1, ddof=1) / np.sqrt(n))
    assert (t > critical).mean() == pytest.approx(0.8, abs=0.01)
    assert seeds_for_power(mde * 1.001, std) == n and seeds_for_power(mde * 0.9, std) > n


def test_ruled_out_and_underpowered_are_told_apart() -> None:
    """CyCLIP's case: an interval [-21.9, 1.4] excludes the paper's +4 (ruled out); one that still
    holds it is underpowered."""
    below = _rows(arm=[0.40, 0.42, 0.41, 0.43, 0.44, 0.40], clip=[0.42, 0.41, 0.43, 0.42, 0.44, 0.41])
    claim = _claim(baseline="clip", expect="greater", smallest_effect=0.04, paper_effect=0.04)
    result = verdict(claim, below)
    assert result["verdict"] == "ruled out" and "paper: +4 points" in result["words"]
    wide = _rows(arm=[0.40, 0.50, 0.41, 0.53, 0.44, 0.40], clip=[0.42, 0.41, 0.43, 0.42, 0.44, 0.41])
    result = verdict(claim, wide)
    assert (
        result["verdict"] == "underpowered"
        and f"detectable before Holm: {100 * result['mde']:.3g} points" in result["words"]
    )


def test_budgets_are_read_from_each_runs_history(tmp_path: Path) -> None:
    """A run's metrics.json history gives a row per evaluated step; verdicts come at every share of
    the run, and a damaged run is named among the dropped seeds, not the end of the report."""
    folder = tmp_path / "runs" / "claims-variants"
    for group, level in (("clip", 0.55), ("mmd", 0.75), ("adversarial", 0.6)):
        for seed in range(1 if group == "adversarial" else 0, 3):
            run = folder / f"{group}-s{seed}"
            run.mkdir(parents=True)
            history = {str(step): {SHAPE: level * step / 400 + 0.01 * seed, COLOR: 1.0} for step in (100, 200, 400)}
            history["300"] = {"zeroshot/shapesworld_val/shape/top1": 0.5}  # a validation pass during fit: no budget
            final = history["400"] | {"global_step": 400, "history": history,
                                      "geometry/shapesworld_test/modality_gap": 0.3 - 0.1 * (group == "mmd")}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(final))
            (run / "checkpoints" / "eval").mkdir(parents=True)
            for step in (100, 200):  # eval_steps saved these weights; the budgets are their steps
                (run / "checkpoints" / "eval" / f"step={step}.ckpt").write_bytes(b"")
            (run / "grid_status.json").write_text(json.dumps({"status": "finished", "seconds": 300.0}))
    (folder / "adversarial-s0").mkdir()
    (folder / "adversarial-s0" / "metrics.json").write_text('{"zeroshot/shapesworld_test/shape/top1": 0.5, "glob')
    rows = runs_of(folder, [SHAPE], {"clip", "mmd", "adversarial"})
    assert sorted({(r["group"], r["step"]) for r in rows if r["group"] != "adversarial"})[:3] == [
        ("clip", 100), ("clip", 200), ("clip", 400)]  # fmt: skip  # not 300: no weights saved there
    assert [r["status"] for r in rows if r["run"] == "adversarial-s0"] == ["damaged"]
    summary = claims(tmp_path / "runs", tmp_path / "out", only=["mmd-keeps-zero-shot", "adversarial-keeps-zero-shot"])
    by_id = {r["claim"]["id"]: r for r in summary["claims"]}
    assert [b["budget"] for b in by_id["mmd-keeps-zero-shot"]["budgets"]] == ["1/4", "1/2", "1"]
    assert by_id["mmd-keeps-zero-shot"]["steps"] == 400
    assert by_id["adversarial-keeps-zero-shot"]["dropped"]["adversarial-s0"] == "damaged run files"
    assert (tmp_path / "out" / "alignment-terms-budgets.png").is_file()
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "## Verdicts at every budget" in table and "adversarial-s0 (damaged run files)" in table
    committed = read_runs_csv(tmp_path / "out" / "runs" / "alignment-terms.csv")
    assert [(r["run"], r["step"], r["status"], r["seconds"]) for r in committed] == [
        (r["run"], r["step"], r["status"], r["seconds"]) for r in rows]  # fmt: skip


def test_a_hand_edited_csv_cell_that_is_not_a_number_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("run,group,seed,zeroshot/x/top1\nclip-s0,clip,0,0.5\nclip-s1,clip,1,n/a\n")
    with pytest.raises(UserError, match=r"e.csv: line 3, column 'zeroshot/x/top1': 'n/a' is not a number"):
        read_runs_csv(path)
    path.write_text("run,group,seed,zeroshot/x/top1\nclip-s0,clip,0,nan\nclip-s1,clip,1,\n")
    rows = read_runs_csv(path)
    assert math.isnan(rows[0]["metrics"]["zeroshot/x/top1"]) and rows[1]["metrics"] == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("experiments:\n  - grid: g.yaml\n", "'experiments' maps each experiment's id to its entry"),
        ("claims:\n  c: {id: c}\n", "'claims' is a list of claims"),
        ("- a\n- b\n", "a claims registry is a mapping"),
        ("protocol: {alpha: 5}\n", "protocol.alpha is a number between 0 and 1"),
        ("protocol: {health: {metric: m}}\n", "protocol.health: give {metric"),
    ],
)
def test_a_registry_of_the_wrong_shape_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_registry(tmp_path / "r.yaml")


def test_the_committed_claims_are_what_the_committed_csvs_give(tmp_path: Path) -> None:
    """`python -m analysis claims docs/claims` reproduces docs/claims' claims.md, claims.json and
    table.md from the committed per-run CSVs: nothing in them was edited by hand or left stale."""
    committed = REPO / "docs" / "claims"
    claims(committed, tmp_path)
    for name in ("claims.md", "claims.json", "table.md"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name


@pytest.mark.slow
def test_every_claim_grid_parses_as_its_runs_will(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.grid import load_grid, validate

    monkeypatch.chdir(REPO)  # grid files name their configs relative to the repository
    _, experiments, all_claims = load_registry()
    for experiment in experiments.values():
        grid = load_grid(experiment.grid)
        assert len(grid.runs) >= 10 and len({run.seed for run in grid.runs}) >= 5, experiment.id
        groups = {split_run_name(run.name)[0] for run in grid.runs}
        spec = experiment.figure
        named = {g for c in all_claims if c.experiment == experiment.id for g in (c.arm, c.baseline) if g}
        named |= set(spec.get("arms", [])) | set((spec.get("lines") or {}).values())
        named |= {g for series in (spec.get("series") or {}).values() for g in series}
        assert named <= groups, f"{experiment.id}: the registry names arms its grid does not run: {named - groups}"
        # Runs that differ only in their seed parse alike: validate the first seed's runs.
        first_seed = min(run.seed for run in grid.runs)
        validate(dataclasses.replace(grid, runs=[run for run in grid.runs if run.seed == first_seed]))


@pytest.mark.slow
def test_every_grid_file_of_the_claims_folder_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pilots and re-runs not (yet) in the registry too, with their tuning runs."""
    from experiments.grid import load_grid, validate
    from experiments.grid.tuning import tuning_runs

    monkeypatch.chdir(REPO)
    _, experiments, _ = load_registry()
    known = {e.grid for e in experiments.values()}
    for path in sorted((REPO / "experiments" / "claims").glob("*.yaml")):
        relative = str(path.relative_to(REPO))
        if path.name in ("claims.yaml", "budget.yaml") or relative in known:
            continue  # the registry and the shared budget are no grids; registered grids: the test above
        grid = load_grid(relative)
        first = [run for run in grid.runs if run.seed == min(r.seed for r in grid.runs)]
        validate(dataclasses.replace(grid, runs=first + tuning_runs(grid)[:3]))


def test_the_readme_shows_the_generated_claims_table() -> None:
    """README's table is docs/claims/table.md as `python -m analysis claims` wrote it, not a copy
    edited by hand that drifts from the verdicts."""
    table = (REPO / "docs" / "claims" / "table.md").read_text().strip()
    assert table in (REPO / "README.md").read_text()


def test_the_readme_table_is_written_between_its_markers(tmp_path: Path) -> None:
    from analysis.claims import TABLE_END, TABLE_START, with_table

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{TABLE_START}\nold table\n{TABLE_END}\n\nafter\n")
    assert with_table(readme, "| new |\n") == f"intro\n{TABLE_START}\n| new |\n{TABLE_END}\n\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="no claims table markers"):
        with_table(readme, "| new |\n")


def test_a_matched_claim_reads_the_baseline_curve_at_the_arms_accuracy() -> None:
    """CyCLIP at matched accuracy: the baseline's consistency where its own run reached the arm's
    zero-shot accuracy, interpolated between its evaluated steps; outside them the seed is dropped."""
    consistency = "consistency/shapesworld/shape/top1"
    rows = []
    for seed in range(3):
        for step, (acc, cons) in zip(
            (100, 200, 400), ((0.3, 0.40), (0.5, 0.50), (0.7, 0.60)), strict=True
        ):  # CLIP: cons = 0.25 + acc / 2
            rows.append({"run": f"clip-s{seed}", "group": "clip", "seed": seed, "status": "finished", "step": step,
                         "final_step": 400, "metrics": {SHAPE: acc, consistency: cons}})  # fmt: skip
        arm_acc = (0.4, 0.6, 0.9)[seed]  # seed 2's accuracy is beyond CLIP's curve
        rows.append({"run": f"cyclip-s{seed}", "group": "cyclip", "seed": seed, "status": "finished", "step": 400,
                     "final_step": 400, "metrics": {SHAPE: arm_acc, consistency: 0.25 + arm_acc / 2 + 0.03}})  # fmt: skip
    claim = _claim(metric=consistency, arm="cyclip", baseline="clip", expect="greater", matched_on=SHAPE)
    from analysis.claims.verdicts import at_budget, paired_effect

    result = paired_effect(claim, at_budget(rows, budgets(claim, rows)[-1]), Protocol(), {}, curves=rows)
    assert result["seeds"] == [0, 1] and result["differences"] == pytest.approx([0.03, 0.03])
    assert result["dropped"] == {"clip-s2": "no point of its curve at the arm's shape"}
    unmatched = paired_effect(dataclasses.replace(claim, matched_on=None), at_budget(rows, 1), Protocol(), {})
    assert unmatched["differences"] == pytest.approx([0.45 + 0.03 - 0.6, 0.55 + 0.03 - 0.6, 0.7 + 0.03 - 0.6])
