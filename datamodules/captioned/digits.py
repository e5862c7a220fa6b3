"""Captioned real digits: scikit-learn's 1,797 handwritten 8x8 digits (``load_digits``: the test part
of UCI's optical-digits set, Alpaydin and Kaynak 1998, 13 writers) written to disk as a user's image-caption data, in English and
Chinese:

    root/images/<split>/<i>.png      the real 8x8 pixels (grey, value * 255 / 16), i = sklearn's index
    root/<split>.csv                 filepath, title, label, language (open_clip's csv layout)
    root/parquet/<split>.parquet     image (HF's {bytes, path}), text, label, language
    root/BUILD.json                  what was built (written last: a folder without it is incomplete)

The split is fixed and stratified (60% train, 15% validation, 25% test; ``seed`` fixes it). It splits
images, not writers: the held-out digits are new images of the same 13 hands. Each
training image appears once per phrasing of :data:`EN_PHRASINGS` and :data:`ZH_PHRASINGS` (10
rows); a validation or test image once, its caption's language alternating over the images of a
digit and its phrasing drawn from ``seed``. ``experiments/configs/digits.yaml`` trains on the
csv files through ``ImageTextDataModule``, the reader of a user's own files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import UserError
from datamodules.image_text.sources import FileBuilder
from datamodules.suites.digits import DIGIT_NAMES

VERSION = 1  # of the layout and captions below; a folder built by another version is rebuilt
SPLITS = {"train": 0.60, "val": 0.15, "test": 0.25}
DIGIT_ZH = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
# {word}: "seven", {numeral}: "7", {zh}: "七". No phrasing holds a digit's character outside its
# slot (a "一个" would put "one" into every Chinese caption).
EN_PHRASINGS = (
    "a handwritten {word}",
    "the digit {numeral} written by hand",
    "a handwritten digit {word}",
    "the number {word}, written by hand",
    "a scan of a handwritten {numeral}",
)
ZH_PHRASINGS = (
    "手写的数字{zh}",
    "数字{zh}的手写体",
    "手写数字{numeral}",
    "这是手写的{zh}",
    "手写数字{zh}的扫描图",
)
# Zero-shot prompts ("{}" = the class name): phrasings of the captions, with the digit's word.
EN_TEMPLATES = ("a handwritten {}", "a handwritten digit {}", "the number {}, written by hand")
ZH_TEMPLATES = ("手写的数字{}", "数字{}的手写体", "这是手写的{}")


def caption(label: int, phrasing: str) -> str:
    return phrasing.format(word=DIGIT_NAMES[label], numeral=str(label), zh=DIGIT_ZH[label])


def vocabulary() -> list[str]:
    """Every word of the English captions and prompts, then every character of the Chinese ones
    (BertTokenizer's ``words``: each CJK character is its own token there), so the preset's
    tokenizer covers every caption and prompt without an unknown token."""
    english = [caption(d, p) for d in range(10) for p in EN_PHRASINGS]
    english += [t.format(name) for t in EN_TEMPLATES for name in DIGIT_NAMES]
    chinese = [caption(d, p) for d in range(10) for p in ZH_PHRASINGS]
    chinese += [t.format(name) for t in ZH_TEMPLATES for name in DIGIT_ZH]
    words = [word for text in english for word in text.replace(",", " , ").split()]
    words += [piece for text in chinese for word in text.split() for piece in word_chars(word)]
    return list(dict.fromkeys(words))


def word_chars(word: str) -> list[str]:
    """A Chinese caption's word as BERT splits it: each CJK character alone, ASCII runs whole."""
    pieces: list[str] = []
    for char in word:
        if char.isascii() and pieces and pieces[-1].isascii():
            pieces[-1] += char
        else:
            pieces.append(char)
    return pieces


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """sklearn indices of each split, stratified by digit, each sorted."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    train, rest = train_test_split(everything, train_size=SPLITS["train"], stratify=labels, random_state=seed)
    val_share = SPLITS["val"] / (SPLITS["val"] + SPLITS["test"])
    val, test = train_test_split(rest, train_size=val_share, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def split_rows(split: str, indices: np.ndarray, labels: np.ndarray, seed: int) -> list[dict]:
    """The rows of one split: {index, title, label, language}."""
    if split == "train":
        return [
            {"index": int(i), "title": caption(int(labels[i]), p), "label": int(labels[i]), "language": language}
            for i in indices
            for language, phrasings in (("en", EN_PHRASINGS), ("zh", ZH_PHRASINGS))
            for p in phrasings
        ]
    rng = random.Random(f"digits:{seed}:{split}")
    seen = [0] * 10
    rows = []
    for i in indices:
        label = int(labels[i])
        language = "en" if seen[label] % 2 == 0 else "zh"
        seen[label] += 1
        phrasing = rng.choice(EN_PHRASINGS if language == "en" else ZH_PHRASINGS)
        rows.append({"index": int(i), "title": caption(label, phrasing), "label": label, "language": language})
    return rows


def build_digits(root: str | Path, seed: int = 0) -> Path:
    """Write the captioned digits under ``root`` unless a complete build of this version and seed is
    there. The files go to a temporary sibling folder first and are renamed into place, so another
    process never sees half a dataset."""
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file: give the folder to write the captioned digits to (e.g. data/digits)")
    wanted = {"dataset": "sklearn load_digits, captioned", "version": VERSION, "seed": seed}
    stamp = root / "BUILD.json"
    if stamp.is_file():
        built = json.loads(stamp.read_text())
        if {k: built.get(k) for k in wanted} == wanted:
            return root
        raise UserError(
            f"{root} holds captioned digits built with seed {built.get('seed')} (version {built.get('version')}), "
            f"not seed {seed} (version {VERSION}): delete the folder, or give another root"
        )
    if root.exists() and any(root.iterdir()):
        raise UserError(
            f"{root} exists and is not a captioned-digits build (no BUILD.json): give an empty or new folder"
        )
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(int)
    root.parent.mkdir(parents=True, exist_ok=True)
    work = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    counts = {}
    for split, indices in split_indices(labels, seed).items():
        rows = split_rows(split, indices, labels, seed)
        counts[split] = {"images": len(indices), "rows": len(rows)}
        _write_split(work, split, rows, pixels)
    (work / "BUILD.json").write_text(json.dumps(wanted | {"splits": counts}, indent=2) + "\n")
    if root.exists():
        root.rmdir()  # empty (checked above)
    try:
        os.replace(work, root)
    except OSError:  # another process finished first: keep its build
        shutil.rmtree(work, ignore_errors=True)
        if not (root / "BUILD.json").is_file():
            raise
    return root


def _write_split(work: Path, split: str, rows: list[dict], pixels: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    png = {}
    for index in dict.fromkeys(row["index"] for row in rows):
        buffer = io.BytesIO()
        Image.fromarray(pixels[index]).save(buffer, format="PNG")
        png[index] = buffer.getvalue()
        (folder / f"{index:04d}.png").write_bytes(png[index])
    with (work / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title", "label", "language"])
        for row in rows:
            writer.writerow([f"images/{split}/{row['index']:04d}.png", row["title"], row["label"], row["language"]])
    images = [{"bytes": png[row["index"]], "path": f"{row['index']:04d}.png"} for row in rows]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array(images, type=image_type),
            "text": [row["title"] for row in rows],
            "label": pa.array([row["label"] for row in rows], type=pa.int64()),
            "language": [row["language"] for row in rows],
        }
    )
    (work / "parquet").mkdir(exist_ok=True)
    pq.write_table(table, work / "parquet" / f"{split}.parquet")


class DigitsFiles(FileBuilder):
    """Builds the captioned digits under ``root`` when they are missing: give it as an
    ``ImageTextDataModule``'s ``build`` (its ``prepare_data`` calls it, once per machine, before
    the files are read).

    Args:
        root: the folder of the files (relative paths start at the working directory).
        seed: fixes the split and the validation/test phrasings.
    """

    def __init__(self, root: str = "data/digits", seed: int = 0) -> None:
        self.root, self.seed = root, seed

    def __call__(self) -> Path:
        return build_digits(self.root, self.seed)
