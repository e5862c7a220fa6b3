"""Shared test setup: caches inside tmp, a seeded torch, the session's trained smoke runs, and
the markers (slow, ddp, cli) that `pytest -m "not slow"` uses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.gettempdir()) / "clip-variants-test-cache"
for variable, sub in (("MPLCONFIGDIR", "matplotlib"), ("HF_HOME", "hf"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
    os.environ.setdefault(variable, str(_CACHE / sub))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import CONFIGS, REPO  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """Train (once per session) a smoke-sized run of a preset; returns its run directory.

    ``trained_run("clip", "--trainer.precision", "32-true")``: extra arguments are CLI overrides.
    """
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("trained")
    cache: dict[tuple[str, ...], Path] = {}

    def train(preset: str, *overrides: str) -> Path:
        key = (preset, *overrides)
        if key not in cache:
            cwd = root / f"run{len(cache)}"
            cwd.mkdir()
            args = [
                "fit",
                "--config",
                str(CONFIGS / f"{preset}.yaml"),
                "--config",
                str(CONFIGS / "smoke.yaml"),
                *overrides,
            ]
            env = dict(os.environ, PYTHONPATH=str(REPO), CLIP_VARIANTS_TRACEBACK="")
            result = subprocess.run(
                [sys.executable, "-m", "experiments", *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            (cache[key],) = (cwd / "runs").glob("*/version_0")
        return cache[key]

    train.root = root  # every run trained so far lives under it (what the notebooks read)
    return train


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow`` is derived: every test that runs an entry point in a subprocess (``cli``), starts
    two processes (``ddp``) or trains a run (the ``trained_run`` fixture) takes seconds, not
    milliseconds; others are marked ``slow`` by hand. ``pytest -m "not slow"`` is the inner loop."""
    for item in items:
        if item.get_closest_marker("cli") or item.get_closest_marker("ddp") or "trained_run" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
