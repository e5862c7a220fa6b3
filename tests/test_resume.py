"""Exact resume: a run killed with SIGKILL after a mid-epoch checkpoint and resumed with
``fit --ckpt_path last`` ends with the same weights and metrics as the run never interrupted;
for DeCLIP also the same NNS queue (a buffer of the state dict) after augmented views, text
views and masks that change with the epoch."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, REPO, TESTS

pytestmark = pytest.mark.cli  # every test here runs `python -m experiments`


def overlay(tmp_path: Path, kill_at: int | None) -> Path:
    """Smoke run of 10 steps over epochs of 6 batches, checkpoints every 4 steps."""
    callbacks = [
        {"class_path": "experiments.checkpointing.StepCheckpoint",
         "init_args": {"every_n_train_steps": 4, "filename": "{step}", "monitor": "step", "mode": "max",
                       "save_top_k": 2, "save_last": True}},
        {"class_path": "experiments.callbacks.FinalMetrics"},
    ]  # fmt: skip
    if kill_at is not None:
        callbacks.append({"class_path": "helpers.killer.KillAtStep", "init_args": {"step": kill_at}})
    config = {
        "data": {"init_args": {"train_samples": 48}},
        "trainer": {"max_steps": 10, "val_check_interval": 5, "deterministic": True, "precision": "32-true",
                    "callbacks": callbacks},
    }  # fmt: skip
    path = tmp_path / f"overlay-{kill_at}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(cwd: Path, preset: str, *args: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), CLIP_VARIANTS_TRACEBACK="1")
    command = [sys.executable, "-m", "experiments", "fit", "--config", str(CONFIGS / f"{preset}.yaml"),
               "--config", str(CONFIGS / "smoke.yaml"), "--trainer.logger.init_args.version", "", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The never-interrupted run of a preset, trained once per module when first asked for."""
    runs: dict[str, Path] = {}

    def run_of(preset: str) -> Path:
        if preset not in runs:
            tmp_path = tmp_path_factory.mktemp(f"whole-{preset}")
            whole = fit(tmp_path, preset, "--config", str(overlay(tmp_path, None)))
            assert whole.returncode == 0, whole.stderr[-3000:]
            run = runs[preset] = tmp_path / "runs" / preset
            # last.ckpt ends as the final weights (step 10), though the last periodic save was at step 8.
            assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
            assert sorted(p.name for p in (run / "checkpoints").glob("step=*")) == ["step=4.ckpt", "step=8.ckpt"]
        return runs[preset]

    return run_of


@pytest.mark.parametrize(
    ("preset", "corrupt_last"),
    [("clip", False), ("clip", True), ("declip", False)],
    ids=["last", "corrupt-last", "declip"],
)
def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(
    preset: str, corrupt_last: bool, uninterrupted: Callable[[str], Path], tmp_path: Path
) -> None:
    killed = fit(tmp_path / "killed", preset, "--config", str(overlay(tmp_path, 6)))
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL after step 6; last.ckpt is step 4
    run = tmp_path / "killed" / "runs" / preset
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    if corrupt_last:  # a truncated last.ckpt: the newest readable step checkpoint is used instead
        last = run / "checkpoints" / "last.ckpt"
        last.write_bytes(last.read_bytes()[:1000])
    resumed = fit(tmp_path / "killed", preset, "--config", str(overlay(tmp_path, None)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if corrupt_last:
        assert "cannot read last.ckpt" in resumed.stderr and "resuming from" in resumed.stderr
        assert (run / "checkpoints" / "last.ckpt.unreadable").is_file()

    reference = uninterrupted(preset)
    expected, got = weights(reference), weights(run)
    assert expected.keys() == got.keys()
    for key in expected:  # DeCLIP: terms.nearestneighbourinfonce.queue and its write position too
        assert torch.equal(expected[key], got[key]), key
    if preset == "declip":
        assert expected["terms.nearestneighbourinfonce.queue_position"] == (10 * 2 * 8) % 4096
    final = {k: v for k, v in json.loads((reference / "metrics.json").read_text()).items() if "test" in k}
    assert final and final == {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if "test" in k}


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    from experiments.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "weights": torch.ones(3)}, path)
    # a local lambda cannot be pickled: AttributeError before Python 3.14, PicklingError from it on
    with pytest.raises((AttributeError, pickle.PicklingError)):
        io.save_checkpoint({"global_step": 8, "weights": lambda: None}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left over
