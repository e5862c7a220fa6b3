"""Local image-text data in every format the datamodule reads, built from real files (PIL images
in several modes, one corrupt image, one empty caption), and a datamodule over them."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datamodules.image_text import ImageTextDataModule
from datamodules.tokenizer import WordTokenizer

SIZE = 16
WORDS = "a red gray blue green yellow white broken square picture".split()
RED = (255, 0, 0)


def _image(mode: str) -> Image.Image:
    if mode == "P":  # a palette image with a transparent index
        image = Image.new("RGB", (24, 20), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0
        return image
    if mode == "CMYK":
        return Image.new("CMYK", (20, 20), (0, 0, 255, 0))  # yellow
    if mode == "RGBA":
        return Image.new("RGBA", (20, 30), (0, 0, 255, 128))
    if mode == "L":
        return Image.new("L", (30, 20), 128)
    return Image.new("RGB", (40, 24), RED)


# (file name, image mode or None for a corrupt file, caption); one corrupt image, one empty caption.
ROWS = [
    ("red.png", "RGB", "a red square"),
    ("gray.png", "L", "a gray square"),
    ("blue.png", "RGBA", "a blue square"),
    ("green.png", "P", "a green square"),
    ("yellow.jpg", "CMYK", "a yellow square"),
    ("broken.png", None, "a broken picture"),
    ("nocaption.png", "RGB", ""),
    ("white.png", "RGB", "a white square"),
]
GOOD = {caption for _, mode, caption in ROWS if mode and caption}


def _encoded(name: str, mode: str | None) -> bytes:
    if mode is None:
        return b"\x89PNG\r\n\x1a\n this is not an image"
    buffer = io.BytesIO()
    _image(mode).save(buffer, "JPEG" if name.endswith(".jpg") else "PNG")
    return buffer.getvalue()


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mode, _ in ROWS:
        (folder / name).write_bytes(_encoded(name, mode))


def make_imagefolder(root: Path) -> Path:
    _write_images(root)
    lines = [json.dumps({"file_name": name, "text": caption}) for name, _, caption in ROWS]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_csv(root: Path, sep: str = ",") -> Path:
    _write_images(root / "images")
    path = root / ("pairs.tsv" if sep == "\t" else "pairs.csv")
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(["filepath", "title", "extra"])
        writer.writerows([f"images/{name}", caption, i] for i, (name, _, caption) in enumerate(ROWS))
    return path


def make_parquet(root: Path, hf_image: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pairs.parquet"
    images = [_encoded(name, mode) for name, mode, _ in ROWS]
    captions = [caption for _, _, caption in ROWS]
    if hf_image:  # the HF Image feature: struct<bytes, path> plus the feature in the schema metadata
        features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
        records = [{"bytes": b, "path": name} for b, (name, _, _) in zip(images, ROWS, strict=True)]
        datasets.Dataset.from_dict({"image": records, "text": captions}, features=features).to_parquet(path)
    else:  # plain binary column, as any parquet writer makes it
        pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "text": captions}), path)
    return path


def make_shards(root: Path) -> list[Path]:
    """Two shards of four samples (<key>.jpg + <key>.txt); every shard ends with a good sample."""
    root.mkdir(parents=True, exist_ok=True)
    order = [5, 0, 6, 1, 2, 3, 4, 7]  # broken and no-caption rows first in each shard
    paths = []
    for shard in range(2):
        path = root / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in order[4 * shard : 4 * shard + 4]:
                name, mode, caption = ROWS[i]
                for field, data in (("jpg", _encoded(name, mode)), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{shard:02d}{i:04d}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def make_format(kind: str, root: Path) -> tuple[str, str | list[str]]:
    """(format, files) of a fixture in each layout."""
    if kind == "imagefolder":
        return "imagefolder", str(make_imagefolder(root / "folder"))
    if kind in ("csv", "tsv"):
        return kind, str(make_csv(root, "\t" if kind == "tsv" else ","))
    if kind.startswith("parquet"):
        return "parquet", str(make_parquet(root, hf_image=kind == "parquet-hf-image"))
    make_shards(root / "shards")
    return "webdataset", str(root / "shards" / "shard-*.tar")


def datamodule(tmp_path: Path, format: str, files, **kwargs) -> ImageTextDataModule:
    options = dict(
        tokenizer=WordTokenizer(WORDS, context_length=8), format=format, train_files=files, image_size=SIZE,
        batch_size=7, eval_batch_size=4, num_workers=0, cache_dir=str(tmp_path / "hf-cache"),
    )  # fmt: skip
    return ImageTextDataModule(**(options | kwargs))
