"""A classification suite from a CLIP_benchmark dataset folder (its ``wds`` layout, read as
``clip_benchmark.datasets.builder.build_wds_dataset`` reads it, and as ``analysis.export``
writes it):

    ROOT/classnames.txt                          one class name per line, in label order
    ROOT/zeroshot_classification_templates.txt   one template per line, "{c}" = the class name
    ROOT/dataset_type.txt                        optional; "classification" when absent
    ROOT/test/nshards.txt                        N: the shards are test/0.tar .. test/<N-1>.tar
    ROOT/test/0.tar                              <key>.<webp|png|jpg|jpeg> + <key>.cls (the label)
    ROOT/train/...                               optional, the same: the linear probe's split

Tar members are grouped into samples by key as webdataset groups them (the name up to the first
"." of its base name; the extension, lowercased, is the rest); members of other extensions are
ignored, and of several images the first of webp, png, jpg, jpeg is taken. Without nshards.txt
every ``*.tar`` of the split folder is read (CLIP_benchmark itself needs the file). A sample
without an image or a label, or whose image or label cannot be read, is skipped and counted in
one warning (CLIP_benchmark would stop on it). Shards are read with the standard library's
``tarfile``; images are decoded lazily, as RGB (webdataset's "pil" decoder), from their offsets.

CLIP_benchmark's ``--custom_template_file`` / ``--custom_classname_file`` JSON files replace the
folder's templates / class names (``template_file``, ``classname_file``), as in its builder.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.suites.base import ClassificationSuite
from datamodules.suites.files import warn_skipped
from datamodules.suites.templates import read_classname_json, read_template_json, read_templates, template_problem

LAYOUT = "ROOT/classnames.txt, ROOT/zeroshot_classification_templates.txt and ROOT/test/<n>.tar shards"
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # build_wds_dataset's order of preference
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skipped meta members


@dataclass(frozen=True)
class _Member:
    shard: Path
    offset: int  # of the member's data in the (uncompressed) tar file
    size: int


class TarImages(Dataset):
    """Images stored in tar shards, read by offset when asked for: {"image": RGB PIL image, "label": int}."""

    def __init__(self, members: list[_Member], labels: list[int]) -> None:
        self.members, self.labels = members, labels

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": _decode(_read(self.members[index])), "label": self.labels[index]}


def _read(member: _Member) -> bytes:
    with member.shard.open("rb") as f:
        return _read_at(f, member.offset, member.size)


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def _lines(path: Path, what: str, fix: str) -> list[str]:
    """CLIP_benchmark's reading of a metadata file (each line stripped), with trailing blank lines
    dropped and a blank line before the last refused: CLIP_benchmark would read it as an entry."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"{path} is empty; {fix}")
    blank = next((n for n, line in enumerate(lines, start=1) if not line), None)
    if blank is not None:
        raise UserError(f"{path}, line {blank}: blank, but every line is one {what}; remove it or fill it in")
    return lines


def read_classnames(root: Path) -> list[str]:
    """``ROOT/classnames.txt``: one class name per line, in label order."""
    path = root / "classnames.txt"
    fix = "write one class name per line, in label order (line 1 is label 0), or pass --classnames FILE.json"
    if not path.is_file():
        raise UserError(f"clip_benchmark {root}: no classnames.txt; {fix}")
    return _lines(path, "class name", fix)


def read_folder_templates(root: Path) -> list[str]:
    """``ROOT/zeroshot_classification_templates.txt``: one template per line with "{c}"."""
    path = root / "zeroshot_classification_templates.txt"
    fix = "write one template per line with '{c}' for the class name, e.g. 'a photo of a {c}.', or pass --templates"
    if not path.is_file():
        raise UserError(f"clip_benchmark {root}: no zeroshot_classification_templates.txt; {fix}")
    templates = _lines(path, "template", fix)
    for number, template in enumerate(templates, start=1):
        problem = template_problem(template) if "{c}" in template else "has no '{c}' where the class name goes"
        if problem:
            raise UserError(f"{path}, line {number}: {template!r} {problem} (CLIP_benchmark fills '{{c}}')")
    return templates


def _shards(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"clip_benchmark {root}: no {split}/ folder of .tar shards; expected {LAYOUT}")
    count_file = folder / "nshards.txt"
    if not count_file.is_file():
        shards = sorted(
            folder.glob("*.tar"), key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)
        )
        if not shards:
            raise UserError(f"clip_benchmark {root}: no .tar shards in {folder}; expected {LAYOUT}")
        return shards
    text = count_file.read_text(encoding="utf-8").strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{count_file} must hold the number of shards (0.tar .. <n-1>.tar), got {text!r}")
    shards = [folder / f"{i}.tar" for i in range(int(text))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise UserError(
            f"{count_file} says {text} shards but {', '.join(missing[:3])} {'is' if len(missing) == 1 else 'are'} "
            f"missing from {folder}; fix the count or add the shards"
        )
    return shards


def _samples(shard: Path, f: BinaryIO) -> dict[str, dict[str, tarfile.TarInfo]]:
    """key -> {extension: member} for the shard's regular files, grouped as webdataset groups them."""
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError) as error:
        raise UserError(
            f"{shard} is not a readable, uncompressed tar file ({error}); write shards as plain .tar"
        ) from None
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in members:
        match = _KEY.match(member.name)
        if not member.isreg() or _META.match(member.name) or not match:
            continue
        samples.setdefault(match.group(1), {})[match.group(2).lower()] = member
    return samples


def _label(data: bytes) -> int | None:
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _verified(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - any failure (unidentified, truncated header, broken chunk) is a bad image
        return False
    return True


def _sample(
    f: BinaryIO, shard: Path, key: str, files: dict[str, tarfile.TarInfo], classes: int
) -> tuple[str, str] | tuple[_Member, int]:
    """A readable sample's (image member, label), or (why it is skipped, the member to name). A label
    outside 0 .. classes - 1 is a UserError: the class list and the labels disagree."""
    where = f"{shard.parent.name}/{shard.name}:{key}"
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in files), None)
    if image_ext is None:
        return "samples without an image", where
    if "cls" not in files:
        return "samples without a .cls label", f"{where}.{image_ext}"
    label = _label(_read_at(f, files["cls"].offset_data, files["cls"].size))
    if label is None:
        return "unreadable .cls labels", f"{where}.cls"
    if not 0 <= label < classes:
        raise UserError(
            f"{shard}: {key}.cls holds label {label}, outside 0..{classes - 1} (the {classes} class names, in label "
            "order); add the missing class names to classnames.txt (or --classnames) or fix the label"
        )
    image = files[image_ext]
    if not _verified(_read_at(f, image.offset_data, image.size)):
        return "unreadable images", f"{where}.{image_ext}"
    return _Member(shard, image.offset_data, image.size), label


def read_split(root: Path, split: str, classes: int) -> tuple[TarImages, dict[str, list[str]], int]:
    """The split's readable samples, the names of the skipped ones by reason, and how many there were."""
    members, labels = [], []
    skipped: dict[str, list[str]] = {}
    total = 0
    for shard in _shards(root, split):
        with shard.open("rb") as f:
            for key, files in _samples(shard, f).items():
                total += 1
                found = _sample(f, shard, key, files, classes)
                if isinstance(found[0], _Member):
                    members.append(found[0])
                    labels.append(int(found[1]))
                else:
                    skipped.setdefault(str(found[0]), []).append(str(found[1]))
    return TarImages(members, labels), skipped, total


def clip_benchmark_suite(
    root: str | Path,
    name: str | None = None,
    *,
    split: str = "test",
    train_split: str | None = "train",
    template_file: str | Path | None = None,
    classname_file: str | Path | None = None,
) -> ClassificationSuite:
    """Zero-shot (and, with a train split, linear-probe) data from a CLIP_benchmark wds folder.

    Args:
        root: the folder (see the module docstring).
        name: suite name in results and the dataset name the JSON files are keyed by
            ("wds/<name>" or "<name>"); the folder's name when None.
        split: the evaluated split's folder.
        train_split: the linear probe's split folder, read when it exists (None: never).
        template_file: replaces the folder's templates: a templates text file ("{}" or "{c}", one
            per line) or CLIP_benchmark's ``--custom_template_file`` JSON.
        classname_file: replaces classnames.txt: CLIP_benchmark's ``--custom_classname_file`` JSON.
    """
    root = Path(root)
    source = f"clip_benchmark {root}"
    if not root.is_dir():
        raise UserError(f"{source}: not a directory; expected {LAYOUT}")
    name = name or root.resolve().name
    kind_file = root / "dataset_type.txt"
    kind = kind_file.read_text(encoding="utf-8").strip().lower() if kind_file.is_file() else "classification"
    if kind != "classification":
        raise UserError(
            f"{kind_file} says {kind!r}; only classification folders (classnames.txt and <key>.cls labels) are read "
            "as a suite: evaluate the folder with CLIP_benchmark itself"
        )
    classnames = read_classname_json(classname_file, name) if classname_file else read_classnames(root)
    suite = ClassificationSuite(name=name, classnames=classnames, templates=[], test=TarImages([], []))
    set_templates(suite, template_file if template_file else read_folder_templates(root))

    splits = {"test": split}
    if train_split and train_split != split and (root / train_split).is_dir():
        splits["train"] = train_split
    reasons = []
    for role, folder in splits.items():
        dataset, skipped, total = read_split(root, folder, len(classnames))
        reasons += [(f"{what} in {folder}/", names, total) for what, names in skipped.items()]
        if len(dataset) == 0:
            raise UserError(f"{source}: no readable image with a .cls label in {root / folder}; expected {LAYOUT}")
        setattr(suite, role, dataset)
    warn_skipped(source, reasons)
    return suite


def set_templates(suite: ClassificationSuite, templates: list[str] | str | Path) -> None:
    """Give ``suite`` its prompts: a list of templates, or a file of them (a templates text file, or
    CLIP_benchmark's ``--custom_template_file`` JSON looked up by the suite's name, whose entry is a
    list of "{c}" templates or {class name: prompts})."""
    if isinstance(templates, list):
        suite.templates, suite.prompts = list(templates), None
        return
    path = Path(templates)
    entry = read_template_json(path, suite.name) if path.suffix.lower() == ".json" else read_templates(path)
    if isinstance(entry, list):
        suite.templates, suite.prompts = entry, None
        return
    missing = [c for c in suite.classnames if c not in entry]
    if missing:
        raise UserError(
            f"templates file {path}: the prompts of {suite.name!r} name no class {missing[0]!r}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; key them by the class names, "
            f"{', '.join(map(repr, suite.classnames[:5]))}{', ...' if len(suite.classnames) > 5 else ''}"
        )
    suite.templates, suite.prompts = [], [list(entry[c]) for c in suite.classnames]


def set_classnames(suite: ClassificationSuite, classname_file: str | Path) -> None:
    """Replace ``suite``'s class names with its entry in CLIP_benchmark's ``--custom_classname_file``
    JSON (label order); the count must match the suite's labels."""
    names = read_classname_json(classname_file, suite.name)
    if len(names) != len(suite.classnames):
        raise UserError(
            f"class names file {classname_file}: {len(names)} names for {suite.name!r}, which has "
            f"{len(suite.classnames)} classes; give one name per label, in label order"
        )
    suite.classnames = names
