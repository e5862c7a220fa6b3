"""Statistics over seeds (analysis/stats.py): the one mean/interval every table uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.results import read_results_csv, results_markdown
from analysis.stats import format_estimate, markdown_table, mean_ci, metric_bounds


def test_mean_ci_is_the_student_t_interval_of_the_mean() -> None:
    values = [0.2, 0.5, 0.4, 0.9]
    got = mean_ci(values)
    mean, sem = np.mean(values), scipy_stats.sem(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(np.std(values, ddof=1))
    assert got["ci95"] == pytest.approx([low, high]) and got["n"] == 4 and not got["clipped"]


def test_a_bounded_interval_stays_in_its_bounds_and_says_so() -> None:
    # docs/variants: CLIP's held-out accuracy over 3 seeds gave [16.0, 102.5] before.
    values = [0.623, 0.405, 0.749]
    free = mean_ci(values)
    assert free["ci95"][1] > 1.0
    bounded = mean_ci(values, bounds=metric_bounds("zeroshot/shapesworld_test/color_shape_heldout/top1"))
    assert bounded["ci95"] == pytest.approx([free["ci95"][0], 1.0]) and bounded["clipped"]
    assert format_estimate(bounded) == "59.2 [16.0, 100.0]†"
    inside = mean_ci([0.5, 0.52, 0.51], bounds=(0.0, 1.0))
    assert not inside["clipped"] and inside["ci95"] == pytest.approx(mean_ci([0.5, 0.52, 0.51])["ci95"])


def test_which_metrics_are_bounded() -> None:
    assert metric_bounds("retrieval/coco/i2t_R@1") == (0.0, 1.0)
    assert metric_bounds("linear_probe/digits/top1") == (0.0, 1.0)
    assert metric_bounds("probes/shapesworld/negation/acc") == (0.0, 1.0)
    assert metric_bounds("probes/text/english/synonym_similarity") == (-1.0, 1.0)
    assert metric_bounds("geometry/modality_gap") == (0.0, 2.0)
    assert metric_bounds("geometry/effective_rank_image") is None
    assert metric_bounds("train/loss") is None


def test_one_seed_none_and_non_finite_values() -> None:
    assert mean_ci([]) == {"mean": None, "std": None, "ci95": None, "n": 0, "clipped": False}
    assert mean_ci([0.3, None, math.nan])["n"] == 1
    assert format_estimate(mean_ci([0.3])) == "30.0 (n=1)" and format_estimate(mean_ci([])) == "-"


def test_tables_mark_a_clipped_interval_with_a_note() -> None:
    summary = {"a": {"zeroshot/x/top1": mean_ci([0.99, 1.0, 0.9], bounds=(0.0, 1.0))}}
    lines = markdown_table(summary, ["zeroshot/x/top1"], ["x"], {"a": "3/3"})
    assert lines[2].startswith("| a | 3/3 | 96.3 [") and lines[2].endswith("100.0]† |")
    assert lines[-1].startswith("†")


def test_a_committed_results_csv_reads_back_into_the_same_table(tmp_path) -> None:
    (tmp_path / "results.csv").write_text(
        "run,status,exit_code,seed,config,model.lr,zeroshot/shapesworld_test/shape/top1\n"
        "clip-s0,finished,0,0,clip,0.001,0.8\nclip-s1,finished,0,1,clip,0.001,0.9\n"
        "clip-s2,failed,1,2,clip,0.001,\n"
    )
    rows = read_results_csv(tmp_path / "results.csv")
    assert [r["group"] for r in rows] == ["config=clip, model.lr=0.001"] * 3
    assert rows[0]["seed"] == 0 and rows[0]["metrics"] == {"zeroshot/shapesworld_test/shape/top1": 0.8}
    assert rows[2]["status"] == "failed" and rows[2]["metrics"] == {}
    table = results_markdown("Grid t", rows, ["clip-s2: exit 1: boom"])
    assert "| config=clip, model.lr=0.001 | 2/3 | 85.0 [" in table and "- clip-s2: exit 1: boom" in table
