"""Test helpers, imported by the tests as ``helpers`` (pytest puts tests/ on the path):
the repository's paths here, ``helpers.terms`` (every term class, toy towers, a 2-process gloo
runner) and ``helpers.killer`` (a callback that SIGKILLs its own run, for the resume test)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
TESTS = REPO / "tests"
