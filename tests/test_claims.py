"""The claims layer: CyCLIP's consistency score against a loop reference, verdicts on synthetic
paired results (each verdict), the registry's checks, and every claim grid parses as a run would."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from analysis.claims import Claim, claims, load_registry, read_runs_csv, runs_csv, verdict
from analysis.consistency import consistency_scores, knn_labels
from analysis.results import split_run_name
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
        assert scores[f"top{k}"] == pytest.approx(sum(int(a == b) for a, b in zip(zeroshot, labels)) / 25)
        assert scores[f"knn{k}_accuracy"] == pytest.approx(sum(int(a == b) for a, b in zip(truth, labels)) / 25)
    with pytest.raises(UserError, match="at least 10 reference images"):
        knn_labels(test, train[:5], train_labels[:5], ks=(10,))


def _claim(**kwargs) -> Claim:
    fields = {"id": "c", "experiment": "e", "paper": "p", "says": "s", "metric": "zeroshot/x/top1", "arm": "arm"}
    return Claim(**(fields | kwargs))


@pytest.mark.parametrize(
    ("arm", "base", "expect", "margin", "expected"),
    [
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "reproduced"),
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "contradicted"),
        ([0.50, 0.56, 0.45, 0.53, 0.49], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.0, "inconclusive"),
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.0, "reproduced"),
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.0, "contradicted"),
        ([0.51, 0.52, 0.52, 0.51, 0.52], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "reproduced"),  # not higher by 2
        ([0.60, 0.62, 0.61, 0.63, 0.60], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "contradicted"),
        ([0.52, 0.50, 0.55, 0.53, 0.51], [0.50, 0.51, 0.52, 0.50, 0.51], "less", 0.02, "inconclusive"),
        ([0.50, 0.50, 0.51, 0.49, 0.50], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "reproduced"),  # non-inferior
        ([0.40, 0.42, 0.41, 0.43, 0.40], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "contradicted"),
        ([0.47, 0.50, 0.48, 0.51, 0.49], [0.50, 0.51, 0.52, 0.50, 0.51], "greater", 0.02, "inconclusive"),
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
    assert one["verdict"] == "inconclusive" and one["effect"]["ci95"] is None


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
    experiments, all_claims = load_registry()
    assert {c.experiment for c in all_claims} <= set(experiments) and len(all_claims) >= 5
    bad = {"experiments": {"e": {"grid": "g.yaml"}}, "claims": [{"id": "x", "experiment": "e", "paper": "p", "says": "s",
           "metric": "m", "arm": "a", "expect": "bigger", "baseline": "b"}]}  # fmt: skip
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
    assert read_runs_csv(source / "runs" / "gap-temperature.csv") == rows
    summary = claims(source, tmp_path / "out", only=["gap-grows-as-temperature-falls", "gap-exists-at-init"])
    assert [r["verdict"] for r in summary["claims"]] == ["reproduced", "reproduced"]
    assert (tmp_path / "out" / "gap-temperature.png").is_file()
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| **reproduced** |" in table and "t0.01 vs t1" in table
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


@pytest.mark.slow
def test_every_claim_grid_parses_as_its_runs_will(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.grid import load_grid, validate

    monkeypatch.chdir(REPO)  # grid files name their configs relative to the repository
    experiments, all_claims = load_registry()
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
