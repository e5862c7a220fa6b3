"""The paper-figure notebooks run top to bottom against runs trained in the test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import REPO

NOTEBOOKS = sorted((REPO / "analysis" / "notebooks").glob("*.ipynb"))
FIGURE = {
    "variants_compared": "variants_compared.png",
    "modality_gap_vs_temperature": "modality_gap_vs_temperature.png",
    "tsne_per_variant": "tsne_per_variant.png",
}
FIXED_TEMPERATURE = (
    "--model.terms",
    "[{class_path: variants.objectives.InfoNCE, init_args: {init_temperature: 0.5, learn_temperature: false}}]",
    "--trainer.logger.init_args.name",
    "clip_t0.5",
)


def test_the_three_figure_notebooks_exist() -> None:
    assert {p.stem for p in NOTEBOOKS} >= set(FIGURE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs_and_with_a_kernelspec(path: Path) -> None:
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} keeps outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_writes_its_figure(path: Path, trained_run, tmp_path: Path, monkeypatch) -> None:
    for args in (("clip",), ("clip", *FIXED_TEMPERATURE), ("filip",)):
        trained_run(*args)
    figures = tmp_path / "figures"
    monkeypatch.setenv("CLIP_VARIANTS_RUNS", str(trained_run.root))
    monkeypatch.setenv("CLIP_VARIANTS_FIGURES", str(figures))
    monkeypatch.setenv("CLIP_VARIANTS_SAMPLES", "24")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert (figures / FIGURE[path.stem]).stat().st_size > 5000
