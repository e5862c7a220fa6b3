"""Running ``python -m experiments`` as a user does: in a fresh process, from the shell's view."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from helpers.terms import free_port

#: overrides for a trained run (the ``trained_run`` fixture) in float32 with 24 test samples per task
FP32 = ("--trainer.precision", "32-true", "--data.init_args.test_samples", "24")


def run_cli(*args: str, cwd: Path, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), CLIP_VARIANTS_TRACEBACK="", MASTER_PORT=str(free_port()), **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def preset_args(path: Path) -> list[str]:
    """The configs of the first command in the preset's header, in its order (demo.yaml goes on
    top of clip.yaml, defilip.yaml on top of declip.yaml): what a user copying the line runs."""
    command = next(line for line in path.read_text().splitlines() if "python -m experiments fit" in line)
    words = command.split()
    configs = [REPO / words[i + 1] for i, word in enumerate(words) if word == "--config"]
    assert configs[-1] == path, f"{path.name}: its header's first command must end with --config {path.name}"
    return [arg for config in configs for arg in ("--config", str(config))]
