"""A classification suite from a folder of class folders (torchvision ``ImageFolder`` layout):

    ROOT/golden_retriever/001.jpg         one test split; classes from folder names,
    ROOT/tabby_cat/a.png                  sorted, "_" -> " " ("golden retriever")

or, with a training split for the linear probe:

    ROOT/train/<class>/<image>            ROOT/test/<class>/<image> (or ROOT/val/ when no test/)

Images may sit in sub-folders of a class folder; extensions are torchvision's IMG_EXTENSIONS.
Unreadable files are skipped and counted in one warning.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from common.errors import UserError
from datamodules.suites.base import ClassificationSuite
from datamodules.suites.files import ImageFiles, readable_images, warn_skipped
from datamodules.suites.templates import IMAGENET_TEMPLATES

LAYOUT = "ROOT/<class>/<image> or ROOT/train/<class>/<image> with ROOT/test/ (or ROOT/val/) alike"


def _class_images(split_dir: Path) -> dict[str, list[Path]]:
    """Folder name -> sorted image paths, for the class folders that hold at least one image file.
    Hidden folders (.ipynb_checkpoints, .git) are not classes."""
    classes = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if images:
            classes[folder.name] = images
    return classes


def imagefolder_suite(
    root: str | Path, templates: list[str] | None = None, name: str | None = None
) -> ClassificationSuite:
    """Zero-shot (and, with a train/ split, linear-probe) data from an image folder.

    Args:
        root: the folder (see the module docstring for the two layouts).
        templates: prompt templates with "{}" or "{c}"; CLIP's 80 ImageNet templates when None.
        name: suite name in results; the folder's name when None.
    """
    root = Path(root)
    source = f"imagefolder {root}"
    if not root.is_dir():
        raise UserError(f"{source}: not a directory; expected {LAYOUT}")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), root)  # root: the flat layout
    split_dirs = (
        {"train": root / "train", "test": test_dir}
        if (root / "train").is_dir() and test_dir != root
        else {"test": root}
    )

    splits = {split: _class_images(d) for split, d in split_dirs.items()}
    if not all(splits.values()):
        empty = next(d for split, d in split_dirs.items() if not splits[split])
        raise UserError(f"{source}: no class folders with images in {empty}; expected {LAYOUT}")
    folders = sorted(splits["test"])
    if "train" in splits and set(splits["train"]) != set(folders):
        only_train, only_test = sorted(set(splits["train"]) - set(folders)), sorted(set(folders) - set(splits["train"]))
        raise UserError(
            f"{source}: train/ and {test_dir.name}/ need the same class folders; "
            f"only in train/: {only_train or 'none'}, only in {test_dir.name}/: {only_test or 'none'}"
        )

    datasets, skipped = {}, []
    for split, classes in splits.items():
        labelled = [(path, label) for label, folder in enumerate(folders) for path in classes[folder]]
        ok, bad = readable_images([path for path, _ in labelled])
        good = set(ok)
        datasets[split] = ImageFiles(ok, [label for path, label in labelled if path in good])
        where = "" if len(splits) == 1 else f" in {split_dirs[split].name}/"
        skipped.append((f"unreadable images{where}", [p.relative_to(root) for p in bad], len(labelled)))
    warn_skipped(source, skipped)
    for split, dataset in datasets.items():
        if len(dataset) == 0:
            raise UserError(f"{source}: no readable images in {split_dirs[split]}; expected {LAYOUT}")

    return ClassificationSuite(
        name=name or root.resolve().name,
        classnames=[folder.replace("_", " ") for folder in folders],
        templates=list(templates) if templates is not None else list(IMAGENET_TEMPLATES),
        test=datasets["test"],
        train=datasets.get("train"),
    )
