"""Test helpers, imported by the tests as ``helpers`` (pytest puts tests/ on the path); what more
than one test file uses lives here, and no test file imports another:
the repository's paths here, ``helpers.terms`` (every term class, toy towers, a 2-process gloo
runner), ``helpers.training`` (a small module, data and quiet trainer for in-process fits),
``helpers.cli`` (``python -m experiments`` in a subprocess, a preset's own configs),
``helpers.cli_cases`` (many entry-point cases in one interpreter), ``helpers.image_text`` (local
image-text data in every format), ``helpers.corpus`` (the adversarial tokenizer corpus) and
``helpers.killer`` (a callback that SIGKILLs its own run, for the resume test)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
TESTS = REPO / "tests"
