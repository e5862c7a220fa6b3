"""CIFAR-10 / CIFAR-100 from the official "python version" archives, unpacked:

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each batch is a Python-2 pickle of {b"data": uint8 [N, 3072] (R, G, B planes of 32x32),
b"labels" (CIFAR-100: b"fine_labels"): [N ints]}; the meta file holds b"label_names"
(b"fine_label_names"). Pass either the unpacked directory or the folder that contains it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from datamodules.suites.base import ClassificationSuite
from datamodules.suites.files import LabelledImages
from datamodules.suites.templates import CIFAR_TEMPLATES


@dataclass(frozen=True)
class _Layout:
    directory: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels_key: bytes
    names_key: bytes


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": _Layout("cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names"),
}

# Everything a pickled numpy array (and its dtype and scalars) needs, under numpy 1 and numpy 2
# module names (numpy 2 keeps the numpy.core ones importable for old pickles). A batch re-saved by
# Python 3 also needs _codecs.encode (bytes at protocol 2) or _frombuffer (arrays at protocol 5).
_ALLOWED = {
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a pickle names the callables it runs, and a
    file from disk could name os.system, so any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UserError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only numpy arrays and lists")
        return super().find_class(module, name)


def _load(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as f:
            data = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except Exception as error:  # truncated or foreign files fail in many ways
        raise UserError(f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR pickle: expected a dict, found {type(data).__name__}")
    return data


def _batch(path: Path, labels_key: bytes, num_classes: int) -> tuple[torch.Tensor, list[int]]:
    """uint8 images [N, 3, 32, 32] and labels of one batch file."""
    data = _load(path)
    pixels, labels = data.get(b"data"), data.get(labels_key)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise UserError(f"{path} is not a CIFAR batch: expected b'data' as a uint8 [N, 3072] array")
    labels = [int(label) for label in labels] if isinstance(labels, (list, tuple, np.ndarray)) else []
    if len(labels) != len(pixels) or any(not 0 <= label < num_classes for label in labels):
        raise UserError(
            f"{path} is not a CIFAR batch: expected {labels_key!r} with one label in [0, {num_classes}) per row"
        )
    return torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy()), labels


def cifar_suite(root: str | Path, variant: str) -> ClassificationSuite:
    """CIFAR-10 or CIFAR-100 (``variant`` "cifar10" / "cifar100"): the 50 000 training images
    (linear probe) and 10 000 test images, with CLIP's 18 CIFAR templates."""
    if variant not in LAYOUTS:
        raise UserError(f"unknown CIFAR variant {variant!r}; use one of {sorted(LAYOUTS)}")
    layout, root = LAYOUTS[variant], Path(root)
    directory = root / layout.directory if (root / layout.directory).is_dir() else root
    files = (*layout.train, layout.test, layout.meta)
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise UserError(
            f"{variant}: {root} is not the CIFAR python version; expected {layout.directory}/ (or its parent) "
            f"with {', '.join(files)}; missing {', '.join(missing)}"
        )

    meta = _load(directory / layout.meta)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or not names:
        raise UserError(
            f"{directory / layout.meta} is not a CIFAR meta file: expected {layout.names_key!r}, a list of names"
        )
    classnames = [(n.decode() if isinstance(n, bytes) else str(n)).replace("_", " ") for n in names]

    train = [_batch(directory / name, layout.labels_key, len(classnames)) for name in layout.train]
    test_images, test_labels = _batch(directory / layout.test, layout.labels_key, len(classnames))
    return ClassificationSuite(
        name=variant,
        classnames=classnames,
        templates=list(CIFAR_TEMPLATES),
        language="en",  # CLIP's English templates
        test=LabelledImages(test_images, test_labels),
        train=LabelledImages(torch.cat([images for images, _ in train]), [y for _, labels in train for y in labels]),
    )
