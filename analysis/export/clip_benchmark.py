"""Evaluation suites as CLIP_benchmark datasets, so CLIP_benchmark's own command line can evaluate an
exported model (``--format open_clip``) on exactly the images and prompts ``analysis zeroshot`` uses.

One folder per classification suite, in CLIP_benchmark's webdataset layout (``build_wds_dataset``):

    OUT/<suite>/test/0.tar             <i>.png (the image at the checkpoint's input size) + <i>.cls (label)
    OUT/<suite>/test/nshards.txt       1
    OUT/<suite>/classnames.txt         one class name per line
    OUT/<suite>/zeroshot_classification_templates.txt   the suite's templates with {c}
    OUT/<suite>/templates.json         {"wds/<suite>": {class: [its prompts]}}: the exact prompts
                                       (``--custom_template_file``; ShapesWorld's are per class)
    OUT/COMMANDS.md                    the command that evaluates each: ``clip_benchmark eval ...``, run
                                       as ``python -m analysis.export.clip_benchmark_cli eval ...`` (the
                                       same CLI with its NumPy 2 bug fixed, see that module)

Each image is stored already resized and center-cropped by the checkpoint's own transform
(``pixels``), so open_clip's preprocessing (which would resize with PIL, not torchvision) leaves it
as it is and both tools embed identical pixels. Retrieval suites are not written: CLIP_benchmark
counts only an image's own captions as right, the suite also identical captions of other images.
"""

from __future__ import annotations

import io
import json
import tarfile
from functools import partial
from pathlib import Path
from typing import IO

import torch
from PIL import Image

from analysis.checkpoint import LoadedCheckpoint
from analysis.commands import slug
from common.errors import UserError
from common.files import write_atomic, write_json, write_text
from datamodules.suites import ClassificationSuite


def export_suites(loaded: LoadedCheckpoint, suites: list, out: Path, model_dir: str | None = None) -> dict:
    """Write every classification suite under ``out``; returns {suite: the command that evaluates it}."""
    classification = [s for s in suites if isinstance(s, ClassificationSuite)]
    if not classification:
        raise UserError("--format clip_benchmark writes classification suites; give one, e.g. --suite digits")
    commands = {}
    for suite in classification:
        name = slug(suite.name)
        folder = out / name
        prompts = suite.class_prompts()
        if len(set(suite.classnames)) != len(suite.classnames):
            raise UserError(f"suite {suite.name}: class names repeat, so CLIP_benchmark cannot key its prompts by them")
        write_atomic(folder / "test" / "0.tar", partial(_write_tar, loaded=loaded, suite=suite))
        write_text(folder / "test" / "nshards.txt", "1\n")
        write_text(folder / "classnames.txt", "\n".join(suite.classnames) + "\n")
        write_text(
            folder / "zeroshot_classification_templates.txt",
            "\n".join(t.replace("{}", "{c}") for t in suite.templates) + "\n",
        )
        write_json(folder / "templates.json", {f"wds/{name}": dict(zip(suite.classnames, prompts, strict=True))})
        commands[suite.name] = command(name, folder, model_dir)
    write_text(out / "COMMANDS.md", "\n".join(f"{k}:\n    {v}\n" for k, v in commands.items()))
    return {"format": "clip_benchmark", "dir": str(out), "commands": commands}


def command(name: str, folder: Path, model_dir: str | None) -> str:
    model = f"local-dir:{model_dir}" if model_dir else "local-dir:EXPORTED_MODEL_DIR"
    # CLIP_benchmark's CLI; under NumPy 2 through analysis.export.clip_benchmark_cli (its issue 147 fixed)
    return (
        f"python -m analysis.export.clip_benchmark_cli eval --model_type open_clip --model {model} --pretrained none --dataset wds/{name} "
        f"--dataset_root {folder} --custom_template_file {folder / 'templates.json'} "
        "--task zeroshot_classification --no_amp --num_workers 0"
    )


def _write_tar(file: IO[bytes], loaded: LoadedCheckpoint, suite: ClassificationSuite) -> None:
    pixels = getattr(loaded.image_transform, "pixels", None)
    with tarfile.open(fileobj=file, mode="w") as tar:
        for i in range(len(suite.test)):  # type: ignore[arg-type]  # map-style: sized
            item = suite.test[i]
            image = pixels(item["image"]) if pixels is not None else item["image"]
            if isinstance(image, torch.Tensor):
                image = Image.fromarray(image.permute(1, 2, 0).numpy())
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            _add(tar, f"{i:06d}.png", buffer.getvalue())
            _add(tar, f"{i:06d}.cls", str(int(item["label"])).encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def read_result(path: Path) -> dict:
    """A CLIP_benchmark result file's metrics."""
    return json.loads(path.read_text())["metrics"]
