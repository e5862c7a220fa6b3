"""Shared test setup: caches inside tmp, small torch thread pool, helpers."""

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

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
