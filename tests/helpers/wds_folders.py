"""CLIP_benchmark ``wds`` folders built for tests: classnames.txt, "{c}" templates and tar shards of
rendered ShapesWorld shapes (png, jpg, webp) with their .cls labels."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from PIL import Image

from datamodules.shapesworld.world import render, sample_scene

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")  # 6 classes: acc5 is measured too
COLORS = ("red", "blue")
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))  # build_wds_dataset's image extensions
TEMPLATES = ["a {c}", "a picture of a {c}"]


def shape_image(color: str, shape: str, size: int = 80) -> Image.Image:
    pixels = render(sample_scene(random.Random(0), 64, 1, [(color, shape)]), 64).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((size, size))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def wds_folder(root: Path, members: list[tuple[str, bytes]], classnames=SHAPES, templates=TEMPLATES, shards=1) -> Path:
    """A CLIP_benchmark wds folder; ``members`` go round-robin into ``shards`` tar files by sample."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    (root / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    tars = [tarfile.open(root / "test" / f"{i}.tar", "w") for i in range(shards)]
    for name, data in members:
        add_member(tars[int(name.split(".")[0].removeprefix("s")) % shards], name, data)
    for tar in tars:
        tar.close()
    return root


def shape_members() -> tuple[list[tuple[str, bytes]], list[Image.Image], list[int]]:
    members, images, labels = [], [], []
    for label, shape in enumerate(SHAPES):
        for color in COLORS:
            ext, fmt = FORMATS[len(images) % 3]
            image = shape_image(color, shape)
            key = f"s{len(images):04d}"
            members += [(f"{key}.{ext}", encoded(image, fmt)), (f"{key}.cls", f"{label}\n".encode())]
            images.append(Image.open(io.BytesIO(members[-2][1])).convert("RGB"))
            labels.append(label)
    return members, images, labels
