"""Image-caption selection probes (pick the true caption among false ones) from a local JSON file,
in any of three forms:

    [{"image": "img/1.jpg", "positive": "a dog on a sofa", "negatives": ["a sofa on a dog"]}]
    {"0": {"filename": "000000397133.jpg", "caption": "...", "negative_caption": "..."}}  (SugarCrepe)
    [{"image_path": "1.jpg", "true_caption": "...", "false_caption": "..."}]             (ARO)

Negatives may be one string or a list of strings. Image paths are relative to IMAGES_ROOT (the
JSON's folder by default). ARO rows that carry a box (bbox_x, bbox_y, bbox_w, bbox_h) are
cropped to it, as ARO's own VG-Relation / VG-Attribution loaders do. Rows with a missing or
unreadable image, an empty true caption or no false caption are skipped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.suites.base import ProbeSuite
from datamodules.suites.files import (
    ImageFiles,
    read_json,
    readable_images,
    warn_skipped,
)

# (image, true caption, false caption(s)) keys of each accepted form, in the order tried.
FORMS = (
    ("image", "positive", "negatives"),
    ("filename", "caption", "negative_caption"),
    ("image_path", "true_caption", "false_caption"),
)
BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
EXPECTED = " or ".join("{" + ", ".join(f'"{k}"' for k in keys) + "}" for keys in FORMS)


class _Row(NamedTuple):
    name: str  # the image path as written, for the skip warning
    file: Path
    positive: str
    negatives: list[str]
    box: tuple[float, float, float, float] | None


class ProbeItems(Dataset):
    """{"image": PIL.Image, "positive": str, "negatives": list[str]} per row; an image with a box
    (x, y, w, h) is cropped to it."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows, self.images = rows, ImageFiles([row.file for row in rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, image = self.rows[index], self.images[index]["image"]
        if row.box is not None:
            x, y, w, h = row.box
            image = image.crop((x, y, x + w, y + h))
        return {"image": image, "positive": row.positive, "negatives": list(row.negatives)}


def _texts(value: Any) -> list[str]:
    """Non-empty stripped strings of a string or a list of strings."""
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _box(row: dict) -> tuple[float, float, float, float] | None:
    if not all(isinstance(row.get(k), (int, float)) for k in BOX):
        return None
    x, y, width, height = (float(row[k]) for k in BOX)
    return x, y, width, height


def probe_file_suite(path: str | Path, images_root: str | Path | None = None, name: str | None = None) -> ProbeSuite:
    """A probe suite from a JSON file (see the module docstring for the three forms).

    Args:
        path: the JSON file.
        images_root: the folder image paths are relative to; the JSON's folder when None.
        name: suite name in results; the file's stem (e.g. "replace_att") when None.
    """
    path = Path(path)
    source = f"probe file {path}"
    data = read_json(path, source)
    named_rows = (
        list(data.items()) if isinstance(data, dict) else list(enumerate(data)) if isinstance(data, list) else []
    )
    rows = [(str(key), row) for key, row in named_rows if isinstance(row, dict)]
    keys = next((form for form in FORMS if any(set(form) <= row.keys() for _, row in rows)), None)
    if keys is None:
        raise UserError(f"{source}: not a probe file; expected a list (or an id-keyed dict) of rows {EXPECTED}")
    image_key, positive_key, negatives_key = keys
    root = Path(images_root) if images_root is not None else path.parent

    candidates, no_positive, no_negatives, no_image = [], [], [], []
    for key, row in rows:
        positive, negatives, image = _texts(row.get(positive_key)), _texts(row.get(negatives_key)), row.get(image_key)
        label = image if isinstance(image, str) and image else f"row {key}"  # names it in the warning
        if not positive:
            no_positive.append(label)
        elif not negatives:
            no_negatives.append(label)
        elif not (isinstance(image, str) and image):
            no_image.append(label)
        else:
            candidates.append(_Row(label, root / image, positive[0], negatives, _box(row)))

    _, bad = readable_images([c.file for c in candidates])
    bad_set = set(bad)
    kept = [c for c in candidates if c.file not in bad_set]
    warn_skipped(
        source,
        [
            ("rows with an empty true caption", no_positive, len(rows)),
            ("rows without false captions", no_negatives, len(rows)),
            (
                "rows with a missing or unreadable image",
                no_image + [c.name for c in candidates if c.file in bad_set],
                len(rows),
            ),
        ],
    )
    if not kept:
        raise UserError(
            f"{source}: no usable rows (an image file, a true caption and a false caption each); "
            f"images are read relative to {root} (pass images_root if they are elsewhere)"
        )
    return ProbeSuite(name=name or path.stem, items=ProbeItems(kept))
