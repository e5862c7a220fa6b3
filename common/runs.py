"""Which checkpoint a path names: a ``.ckpt`` file, or a run directory (``runs/<name>/version_<n>/``,
a grid's ``runs/<grid>/<run>/``, or ``runs/<name>/`` with its versions), whose newest
``checkpoints/last.ckpt`` is taken. Shared by the analysis' ``--ckpt`` and ``model.init_from``.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError


def resolve_checkpoint(path: str | Path, option: str = "--ckpt") -> Path:
    """A checkpoint file, or a run directory: the newest ``checkpoints/last.ckpt`` under it.
    ``option`` is how messages name the setting the path came from."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(
                f"no checkpoints/last.ckpt under {path}: pass {option} a .ckpt file or a run directory "
                "(runs/<name>/version_<n>)"
            )
        names = sorted({str(run_key(p)) for p in found})
        if len(names) > 1:
            raise UserError(
                f"{path} holds checkpoints of {len(names)} different runs ({', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''}): pass {option} one run directory or a .ckpt file"
            )
        return found[-1]  # the newest version of the one run
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def run_key(checkpoint: Path) -> Path:
    """Which run a checkpoint belongs to: the versions of runs/<name>/version_<n>/ are one run
    (its newest version is taken); a grid's runs/<grid>/<run>/ are each their own."""
    run = checkpoint.parent.parent
    return run.parent if run.name.startswith("version_") else run
