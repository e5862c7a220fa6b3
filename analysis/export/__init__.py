"""``python -m analysis export --ckpt RUN --format FORMAT [--out DIR]``: a checkpoint for other tools.

- ``open_clip`` (:mod:`analysis.export.open_clip`): a model config, a state dict and the tokenizer
  that ``open_clip.create_model_and_transforms`` and ``get_tokenizer`` load.
- ``onnx`` (:mod:`analysis.export.onnx`): both towers as ONNX graphs, checked with onnxruntime.
- ``clip_benchmark`` (:mod:`analysis.export.clip_benchmark`): the ``--suite`` classification suites
  as CLIP_benchmark datasets, with the command that evaluates an open_clip export on them.
"""

from __future__ import annotations

from pathlib import Path

from analysis.checkpoint import LoadedCheckpoint
from analysis.commands import slug

FORMATS = ("open_clip", "onnx", "clip_benchmark")


def export(
    loaded: LoadedCheckpoint, format: str, out: Path, suites: list | None = None, name: str | None = None,
    model_dir: str | None = None,
) -> dict:  # fmt: skip
    """Write ``loaded`` (or, for clip_benchmark, ``suites``) in ``format`` under ``out``."""
    if format == "open_clip":
        from analysis.export.open_clip import export_open_clip

        return export_open_clip(loaded, out, name or f"cv-{slug(loaded.name)}")
    if format == "onnx":
        from analysis.export.onnx import export_onnx

        return export_onnx(loaded, out)
    from analysis.export.clip_benchmark import export_suites

    return export_suites(loaded, suites or [], out, model_dir)
