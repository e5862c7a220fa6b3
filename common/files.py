"""The one way the suite writes a file that someone else reads (a grid deciding a run finished,
an analysis reading a checkpoint, a notebook reading results): write a temporary file in the
same folder, then rename it into place. A rename within one filesystem is atomic, so a reader
or a crash never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common.errors import UserError

if TYPE_CHECKING:  # matplotlib is slow to import; only save_figure needs it, and only its type
    from matplotlib.figure import Figure


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """JSON with non-finite floats written as null (strict JSON has no NaN)."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False, sort_keys=sort_keys) + "\n"
    return write_text(path, text)


def save_torch(path: str | Path, payload: Any) -> Path:
    """``torch.save`` through a temporary file (checkpoints, embeddings)."""
    import torch

    return write_atomic(path, lambda file: torch.save(payload, file))


def holds_objects(error: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a file because it pickles objects other than
    tensors and plain data (classes, functions: code that loading would run), rather than because
    the file is damaged. torch words it "Unsupported global ..." or "Trying to load unsupported
    GLOBAL ... whose module ... is blocked" (os.system, builtins), or "... allowlisted ...";
    its advice to re-run with weights_only=False must never reach the user as the fix."""
    text = str(error).lower()
    return "unsupported global" in text or "allowlisted" in text


def save_figure(figure: Figure, path: str | Path, dpi: int = 150) -> Path:
    return write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=dpi))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_yaml(path: str | Path) -> Any:
    """A YAML file through the safe loader; a syntax error is one UserError naming the file, line
    and column (a colon followed by a space inside an unquoted value is the usual cause)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}:{where}: not valid YAML ({problem}); quote values that contain ': '") from None
