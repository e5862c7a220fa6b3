"""Shared pieces of the suite loaders: image files as dataset items, the readability check that
lets loaders skip bad files, in-memory labelled images, JSON reading and the skip warning.

    ImageFiles([Path("cat/1.jpg"), Path("dog/2.png")], labels=[0, 1])[1]
        -> {"image": <PIL.Image.Image mode=RGB size=...>, "label": 1}
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from common.errors import UserError

SHOWN_NAMES = 5  # bad file names listed in a skip warning; the count covers the rest


class ImageFiles(Dataset):
    """Image files read lazily (in the DataLoader workers), each fully loaded and its file closed.

    Args:
        paths: one image file per item.
        labels: one integer label per item; None gives items without a "label" key.
    """

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | None = None) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = None if labels is None else [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # load() inside the with block: the pixels stay, the file handle does not (a long
        # evaluation would otherwise hold one open file per image it has touched).
        with Image.open(self.paths[index]) as image:
            image.load()
        item: dict[str, Any] = {"image": image}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class LabelledImages(Dataset):
    """Images already in memory (PIL images, or uint8 [3, H, W] tensors such as the rows of one
    [N, 3, H, W] tensor) with integer labels: {"image": ..., "label": int}."""

    def __init__(self, images: Sequence[Image.Image] | torch.Tensor, labels: Sequence[int]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


def readable_images(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(ok, bad): whether each file exists and PIL can read its header and ``verify()`` it.

    Checked once at construction so a bad file is skipped and counted instead of killing a
    DataLoader worker mid-evaluation. ``verify()`` does not decode every format fully (a
    truncated JPEG can pass); decoding all images here would cost as much as the evaluation.
    """
    ok, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception:  # noqa: BLE001 - any failure (missing, unidentified, broken chunk) is a bad row
            bad.append(path)
        else:
            ok.append(path)
    return ok, bad


def warn_skipped(source: str, skipped: Sequence[tuple[str, Sequence[object], int]]) -> None:
    """One warning for a suite's skipped rows, e.g. "imagefolder /x: skipped 2 unreadable images
    of 50: a.jpg, b.png". ``skipped`` holds (what, names of the skipped rows, total) per reason;
    reasons with nothing skipped are left out, and nothing is warned when none remain."""
    parts = []
    for what, names, total in skipped:
        if names:
            shown = ", ".join(str(n) for n in names[:SHOWN_NAMES])
            more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
            parts.append(f"skipped {len(names)} {what} of {total}: {shown}{more}")
    if parts:
        warnings.warn(f"{source}: " + "; ".join(parts), stacklevel=3)


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON at ``path``; a missing or malformed file is a UserError naming ``what``
    the file should have been."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: no file at {path}; pass the path of the JSON file")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what}: {path} is not valid JSON ({error})") from error
