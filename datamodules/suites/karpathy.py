"""Image-text retrieval from a Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json):

    {"dataset": "coco",
     "images": [{"filepath": "val2014",             (COCO only)
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test",                   (train / restval / val / test)
                 "sentences": [{"raw": "A man riding a bike."}, ...]}, ...]}

An image is IMAGES_ROOT/filepath/filename, IMAGES_ROOT defaulting to the JSON's folder. Missing
or unreadable images and empty captions are skipped and counted in one warning; an image left
without captions is dropped.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from datamodules.suites.base import RetrievalSuite
from datamodules.suites.files import (
    ImageFiles,
    read_json,
    readable_images,
    warn_skipped,
)

EXPECTED = '{"images": [{"filename": ..., "split": ..., "sentences": [{"raw": ...}]}]} (Karpathy split JSON)'


def _rows(data: object, source: str) -> list[dict]:
    rows = data.get("images") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"filename", "split", "sentences"} <= r.keys() for r in rows
    ):
        raise UserError(f"{source}: not a Karpathy split file; expected {EXPECTED}")
    return rows


def karpathy_suite(
    json_path: str | Path, images_root: str | Path | None = None, split: str = "test", name: str | None = None
) -> RetrievalSuite:
    """Retrieval data of one split (the 5k COCO / 1k Flickr30k test images by default).

    Args:
        json_path: the Karpathy split JSON.
        images_root: the folder the JSON's "filepath"/"filename" are relative to; the JSON's folder
            when None.
        split: which split's images to use.
        name: suite name in results; the JSON's "dataset" field (else its file name) when None.
    """
    json_path = Path(json_path)
    source = f"karpathy {json_path}"
    data = read_json(json_path, source)
    rows = _rows(data, source)
    present = sorted({str(r["split"]) for r in rows})
    if split not in present:
        raise UserError(f"{source}: no images in split {split!r}; the file has splits {present}")
    root = Path(images_root) if images_root is not None else json_path.parent

    captioned, empty, uncaptioned = [], [], []  # captioned: (name, path, captions)
    n_captions = 0
    for row in (r for r in rows if str(r["split"]) == split):
        relative = Path(str(row.get("filepath", ""))) / str(row["filename"])
        sentences = row["sentences"] if isinstance(row["sentences"], list) else []
        raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
        texts = [raw.strip() for raw in raws if isinstance(raw, str) and raw.strip()]
        n_captions += len(sentences)
        empty += [str(relative)] * (len(sentences) - len(texts))  # named by their image
        if texts:
            captioned.append((relative, root / relative, texts))
        else:
            uncaptioned.append(relative)

    _, bad = readable_images([path for _, path, _ in captioned])
    bad_set = set(bad)
    kept = [(path, texts) for _, path, texts in captioned if path not in bad_set]
    n_images = len(captioned) + len(uncaptioned)
    warn_skipped(
        source,
        [
            ("missing or unreadable images", [name for name, path, _ in captioned if path in bad_set], n_images),
            ("empty captions", empty, n_captions),
            ("images without captions", uncaptioned, n_images),
        ],
    )
    if not kept:
        raise UserError(
            f"{source}: no readable image with a caption in split {split!r}; images are read from "
            f"{root}/<filepath>/<filename> (pass images_root if they are elsewhere)"
        )
    return RetrievalSuite(
        name=name or str(data.get("dataset") or json_path.stem),
        images=ImageFiles([path for path, _ in kept]),
        captions=[texts for _, texts in kept],
    )
