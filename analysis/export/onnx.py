"""Both towers of a checkpoint as ONNX graphs (``torch.onnx.export``, its ``torch.export`` exporter),
checked against PyTorch with onnxruntime before anything is kept:

    OUT/image.onnx      image [N, 3, S, S] float (normalised pixels) -> image_embedding [N, D], L2-normalised
    OUT/text.onnx       text [N, L] int64 token ids -> text_embedding [N, D], L2-normalised
    OUT/preprocess.json image size, mean and std, context length, pad id, logit scale
    OUT/tokenizer.json  the tokenizer as a Hugging Face fast tokenizer (for CLIP's BPE: open_clip's
                        ``tokenize`` gives the same ids)

N is dynamic (any batch size). Pixels are normalised as the suite's evaluation transform does it:
resize the shorter side to S (bicubic), center-crop, scale to [0, 1], subtract ``mean``, divide by
``std``. The global embeddings are exported; a model that scores pairs its own way (FILIP) is
exported with a warning that they are not what it ranks by. Needs ``pip install -e '.[onnx]'``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from analysis.checkpoint import LoadedCheckpoint
from analysis.export.open_clip import write_hf_tokenizer
from common.errors import UserError
from common.files import write_atomic, write_json
from datamodules.tokenizer.base import HFTokenizer

TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted, per embedding entry


class _Tower(nn.Module):
    """One tower's normalised global embedding, as a graph with one input and one output."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x)[0]


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda file: file.write(data)


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install -e '.[onnx]'")


def export_onnx(loaded: LoadedCheckpoint, out: Path, check_batch: int = 3) -> dict:
    """Write both towers to ``out`` and return the largest difference onnxruntime showed."""
    _require_onnx()
    import onnxruntime

    if loaded.global_note:
        warnings.warn(f"--format onnx: {loaded.global_note}", stacklevel=2)
    model, size = loaded.model, int(getattr(loaded.image_transform, "image_size", 224))
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, size, size, generator=generator)
    text = loaded.tokenizer(["a photo", "two words and more"])
    checks = {
        "image": torch.randn(check_batch, 3, size, size, generator=generator),
        "text": loaded.tokenizer(["a", "the longest of these captions here", "x y", "one more caption"][:check_batch]),
    }
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"format": "onnx", "dir": str(out), "max_abs_diff": {}}
    for name, tower, example in (("image", model.vision_tower, image), ("text", model.text_tower, text)):
        if not isinstance(tower, nn.Module):  # a text tower is typed by its contract; ONNX exports modules
            raise UserError(f"--format onnx: the {name} tower {type(tower).__name__} is not a torch module")
        module = _Tower(tower)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            batch = torch.export.Dim("batch", min=1, max=65536)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    torch.onnx.export(
                        module, (example,), str(path), input_names=[name], output_names=[f"{name}_embedding"],
                        dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False, external_data=False,
                    )  # fmt: skip
                except Exception as error:  # noqa: BLE001 - the exporter's own failure, on a tower it cannot trace
                    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    raise UserError(
                        f"--format onnx: torch.onnx cannot export the {type(tower).__name__} ({reason}); the other "
                        "formats may still work"
                    ) from None
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            with torch.no_grad():
                expected = module(checks[name]).numpy()
            got = session.run(None, {name: checks[name].numpy()})[0]
            diff = float(np.abs(got - expected).max())
            if not diff <= TOLERANCE:
                raise UserError(
                    f"--format onnx: onnxruntime's {name} embeddings differ from PyTorch's by {diff:.2e} (more than "
                    f"{TOLERANCE:g}); the {type(tower).__name__} does not export faithfully"
                )
            data = path.read_bytes()
        write_atomic(out / f"{name}.onnx", _writer(data))
        result["max_abs_diff"][name] = diff
    transform = loaded.image_transform
    scales = (getattr(t, "logit_scale", None) for t in model.terms.values())
    scale = next((s() for s in scales if isinstance(s, nn.Module)), None)
    write_json(
        out / "preprocess.json",
        {"image_size": size, "mean": list(getattr(transform, "mean", [])), "std": list(getattr(transform, "std", [])),
         "resize": "shorter side, bicubic, then center crop", "context_length": int(text.shape[1]),
         "pad_id": int(getattr(loaded.tokenizer, "pad_id", 0)),
         "logit_scale": float(scale) if scale is not None else None, "checkpoint": str(loaded.path)},
    )  # fmt: skip
    if isinstance(loaded.tokenizer, HFTokenizer):
        write_hf_tokenizer(loaded.tokenizer, out)
    return result
