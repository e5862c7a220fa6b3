"""The grid runner: expansion, validation before any run, failure isolation, skipping, results."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.errors import UserError
from experiments.grid import load_grid, validate

from helpers import CONFIGS, REPO


def grid_file(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"runs_dir": str(tmp_path / "runs"), **spec}))
    return path


def test_product_zip_and_seeds_expand_into_named_runs(tmp_path: Path) -> None:
    grid = load_grid(
        grid_file(
            tmp_path,
            configs=[str(CONFIGS / "smoke.yaml")],
            product={"config": [str(CONFIGS / "clip.yaml"), str(CONFIGS / "siglip.yaml")], "model.lr": [0.001, 0.0005]},
            zip={"model.warmup_steps": [1, 2], "trainer.max_steps": [3, 4]},
            seeds=[0, 1],
        )
    )
    assert len(grid.runs) == 2 * 2 * 2 * 2
    names = [run.name for run in grid.runs]
    assert names[0] == "clip-0.001-1-3-s0" and len(set(names)) == len(names)
    assert all(name.endswith("-s0") for name in names[:8])  # every arm's first seed comes first
    run = next(r for r in grid.runs if r.name == "siglip-0.0005-2-4-s1")
    assert run.seed == 1 and run.values["trainer.max_steps"] == 4 and run.values["model.warmup_steps"] == 2
    args = run.args
    assert args[:3] == ["fit", "--config", str(CONFIGS / "smoke.yaml")]  # the grid's configs first
    assert args[args.index(str(CONFIGS / "siglip.yaml")) - 1] == "--config"
    assert args[args.index("--model.lr") + 1] == "0.0005" and args[args.index("--seed_everything") + 1] == "1"
    assert args[args.index("--trainer.logger.init_args.name") + 1] == run.name
    assert run.directory == tmp_path / "runs" / "g" / run.name
    assert len({r.group for r in grid.runs}) == 8  # seeds share a group


def test_a_value_holding_seed_gets_each_runs_seed(tmp_path: Path) -> None:
    grid = load_grid(
        grid_file(tmp_path, configs=[str(CONFIGS / "smoke.yaml")], seeds=[3, 4],
                  zip={"model.init_from": ["pre/s{seed}.ckpt"], "model.freeze": [{"vision_tower": 2}]})
    )  # fmt: skip
    for run in grid.runs:
        assert run.args[run.args.index("--model.init_from") + 1] == f"pre/s{run.seed}.ckpt"
        assert run.args[run.args.index("--model.freeze") + 1] == '{"vision_tower": 2}'
    assert len({r.group for r in grid.runs}) == 1  # the templated value is one arm


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"prodcut": {"model.lr": [1]}}, "unknown grid key(s) prodcut"),
        ({"zip": {"model.lr": [1, 2], "trainer.max_steps": [3]}}, "equal lengths"),
        ({"product": {"model.lr": [0.1, 0.2]}, "run_name": "same"}, "duplicate run names (same)"),
        ({"product": {"config": ["nowhere.yaml"]}}, "config file not found: nowhere.yaml"),
        ({"seeds": "0"}, "'seeds' is a non-empty list of integers"),
        ({"product": {"model.lr": [0.1]}, "run_name": "{model.lrr}"}, "run_name uses {model.lrr}"),
        ({"product": {"model.lr": []}}, "non-empty lists"),
    ],
)
def test_grid_mistakes_are_named(spec: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_grid(grid_file(tmp_path, **spec))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "product, message",
    [
        ({"model.lrr": [0.1]}, "grid run 0.1-s0: unrecognized arguments: --model.lrr"),
        ({"model.lr": ["fast"]}, 'grid run fast-s0: Parser key "model.lr"'),
    ],
)
def test_every_run_is_validated_before_any_starts(product: dict, message: str, tmp_path: Path) -> None:
    grid = load_grid(grid_file(tmp_path, configs=[str(CONFIGS / "clip.yaml")], product=product))
    with pytest.raises(UserError) as error:
        validate(grid)
    assert message in str(error.value)
    assert not (tmp_path / "runs").exists()


def run_grid(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), CLIP_VARIANTS_TRACEBACK="")
    return subprocess.run(
        [sys.executable, "-m", "experiments", "grid", str(path), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.cli
def test_a_failing_run_is_isolated_recorded_skipped_and_retried(tmp_path: Path) -> None:
    path = grid_file(
        tmp_path,
        name="g",
        configs=[str(CONFIGS / "clip.yaml"), str(CONFIGS / "smoke.yaml")],
        product={"model.lr": [0.001, 1.0e30]},  # the second diverges: a non-finite loss
        seeds=[0],
        run_name="lr{model.lr}",
    )
    result = run_grid(path, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "runs" / "g"
    good, bad = (json.loads((root / name / "grid_status.json").read_text()) for name in ("lr0.001", "lr1e+30"))
    assert good["status"] == "finished" and (root / "lr0.001" / "metrics.json").is_file()
    assert bad["status"] == "failed" and bad["exit_code"] != 0
    assert any("non-finite loss" in line for line in bad["log_tail"]), bad["log_tail"]
    rows = {row["run"]: row for row in csv.DictReader((root / "results.csv").open())}
    assert rows["lr0.001"]["status"] == "finished" and rows["lr1e+30"]["status"] == "failed"
    final = json.loads((root / "lr0.001" / "metrics.json").read_text())  # the table holds the run's own numbers
    assert (
        float(rows["lr0.001"]["zeroshot/shapesworld_test/shape/top1"]) == final["zeroshot/shapesworld_test/shape/top1"]
    )
    markdown = (root / "results.md").read_text()
    assert "| model.lr=0.001 | 1/1 |" in markdown and "- lr1e+30: exit" in markdown
    # The HParams dashboard gets the finished run's hyperparameters and final metrics.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = {
        v.tag
        for f in (root / "lr0.001").glob("events.*")
        for e in EventFileLoader(str(f)).Load()
        for v in e.summary.value
    }
    assert "_hparams_/experiment" in tags and "hp/zeroshot/shapesworld_test/shape/top1" in tags

    again = run_grid(path)
    assert "2 runs, 0 to run, 2 skipped" in again.stderr
    retried = run_grid(path, "--retry-failed")
    assert "2 runs, 1 to run, 1 skipped" in retried.stderr and "lr1e+30: failed" in retried.stderr


@pytest.mark.cli
def test_dry_run_lists_the_commands_and_runs_nothing(tmp_path: Path) -> None:
    path = grid_file(tmp_path, configs=[str(CONFIGS / "clip.yaml")], seeds=[3, 4])
    result = run_grid(path, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("s3 [pending]: python -m experiments fit --config")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_committed_grids_expand_and_validate() -> None:
    cwd = Path.cwd()
    os.chdir(REPO)  # grid files name configs relative to the repository root
    try:
        for path in sorted((REPO / "experiments" / "grids").glob("*.yaml")):
            grid = load_grid(path)
            validate(grid)
            assert grid.runs, path.name
        assert len(load_grid(REPO / "experiments" / "grids" / "variants.yaml").runs) == 7 * 3
    finally:
        os.chdir(cwd)


def test_the_trainer_presets_parse_with_a_preset() -> None:
    from experiments.cli import validate as validate_args

    for path in sorted((CONFIGS / "trainer").glob("*.yaml")):
        header = path.read_text().splitlines()[0]
        assert header.startswith("#"), path.name
        validate_args(["fit", "--config", str(CONFIGS / "clip.yaml"), "--config", str(path)])


@pytest.mark.cli
def test_slurm_launcher_runs_the_array_with_submitits_local_executor(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    path = grid_file(
        tmp_path,
        name="array",
        configs=[str(CONFIGS / "clip.yaml"), str(CONFIGS / "smoke.yaml")],
        seeds=[0, 1],
        slurm={"time_min": 10, "cpus_per_task": 1},
    )
    result = run_grid(path, "--launcher", "slurm")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "runs" / "array"
    for name in ("s0", "s1"):
        status = json.loads((root / name / "grid_status.json").read_text())
        assert status["status"] == "finished" and (root / name / "metrics.json").is_file()
    assert "| all | 2/2 |" in (root / "results.md").read_text()
    assert "2 runs, 0 to submit, 2 skipped" in run_grid(path, "--launcher", "slurm").stderr


def test_tuning_chooses_each_groups_value_on_validation_only(tmp_path: Path) -> None:
    """A sweep whose test metric would choose differently chooses by the validation metric; the
    tuning runs never evaluate the test set, and a test metric cannot be named to choose on."""
    from experiments.grid.tuning import TUNE_ARGS, apply_choices, choose, select, tuning_runs

    val, test = "zeroshot/shapesworld_val/shape/top1", "zeroshot/shapesworld_test/shape/top1"
    spec = dict(configs=[str(CONFIGS / "smoke.yaml")], seeds=[0, 1],
                product={"config": [str(CONFIGS / "clip.yaml"), str(CONFIGS / "siglip.yaml")]},
                tune={"key": "model.lr", "values": [1e-4, 1e-3, 1e-2], "seeds": [100, 101], "metric": val})  # fmt: skip
    grid = load_grid(grid_file(tmp_path, **spec))
    runs = tuning_runs(grid)
    assert len(runs) == 2 * 3 * 2 and all(r.args[-len(TUNE_ARGS) :] == TUNE_ARGS for r in runs)
    assert runs[0].args[-len(TUNE_ARGS) - 2 : -len(TUNE_ARGS)] == ["--model.lr", "0.0001"]
    assert runs[0].name == "lr0.0001-clip-s100" and runs[0].directory.parent == grid.directory / "tune"
    # clip: validation prefers 1e-3, test would prefer 1e-2; siglip: validation prefers 1e-2.
    best = {"clip": {1e-4: (0.3, 0.3), 1e-3: (0.6, 0.4), 1e-2: (0.5, 0.9)},
            "siglip": {1e-4: (0.2, 0.9), 1e-3: (0.3, 0.8), 1e-2: (0.7, 0.1)}}  # fmt: skip
    for run in runs:
        arm = Path(run.values["config"]).stem
        score_val, score_test = best[arm][run.values["model.lr"]]
        run.directory.mkdir(parents=True)
        (run.directory / "metrics.json").write_text(json.dumps({val: score_val + 0.01 * run.seed, test: score_test}))
        (run.directory / "grid_status.json").write_text(json.dumps({"status": "finished"}))
    choices = choose(grid, runs)
    assert {g: c["value"] for g, c in choices.items()} == {"config=clip": 1e-3, "config=siglip": 1e-2}
    assert json.loads((grid.directory / "tuning.json").read_text()) == choices
    apply_choices(grid, choices)
    for run in grid.runs:
        assert run.args[-2:] == ["--model.lr", "0.001" if "clip" in run.name else "0.01"]
    assert select({"a": [0.5, 0.5], "b": [0.4, 0.6], "c": [0.5]}) == "a"  # ties: the first listed
    assert select({"a": [0.9, float("nan")], "b": [0.4, 0.6]}) == "b"  # a rate that diverged once is out
    with pytest.raises(UserError, match="every value had a tuning run that failed"):
        select({"a": [0.9, float("nan")]})
    with pytest.raises(UserError, match="not a validation metric"):
        load_grid(grid_file(tmp_path, **(spec | {"tune": spec["tune"] | {"metric": test}})))
    with pytest.raises(UserError, match="also an axis or an 'args' entry"):
        load_grid(grid_file(tmp_path, **(spec | {"args": ["--model.lr", "0.01"]})))
    (runs[0].directory / "metrics.json").write_text(json.dumps({"zeroshot/shapesworld_val/color/top1": 0.5}))
    typo = load_grid(
        grid_file(tmp_path, **(spec | {"tune": spec["tune"] | {"metric": "zeroshot/shapesworld_val/shap/top1"}}))
    )
    with pytest.raises(UserError, match="tune.metric zeroshot/shapesworld_val/shap/top1 is logged by no tuning run"):
        choose(typo, tuning_runs(typo))
    with pytest.raises(UserError, match="also final seeds"):
        load_grid(grid_file(tmp_path, **(spec | {"tune": spec["tune"] | {"seeds": [1, 100]}})))
