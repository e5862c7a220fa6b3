"""Suite loaders: tiny fixtures in each real on-disk format, checked against the values written."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from common.errors import UserError
from datamodules.suites.cifar import cifar_suite
from datamodules.suites.digits import digits_suite
from datamodules.suites.files import ImageFiles, readable_images
from datamodules.suites.imagefolder import imagefolder_suite
from datamodules.suites.karpathy import karpathy_suite
from datamodules.suites.probe_files import probe_file_suite
from datamodules.suites.templates import (
    CIFAR_TEMPLATES,
    IMAGENET_TEMPLATES,
    read_templates,
)
from datamodules.transforms import EvalImageTransform

TRANSFORM = EvalImageTransform(32, [0.5] * 3, [0.25] * 3)
GARBAGE = b"this is not an image at all" * 10


def _pattern(size: tuple[int, int], mode: str, seed: int) -> np.ndarray:
    """Distinct pixel values for an image of ``size`` (w, h) in ``mode``."""
    w, h = size
    rng = np.random.default_rng(seed)
    if mode in ("L", "P"):
        return rng.integers(0, 200 if mode == "L" else 4, (h, w), dtype=np.uint8)
    return rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)


def _write(path: Path, size: tuple[int, int], mode: str, seed: int = 0) -> np.ndarray:
    """Write an image file (format from the suffix) and return the pixels that were written:
    P images as palette indices, JPEGs as one flat color (JPEG is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        pixels = np.full((size[1], size[0], 3), (30 + seed, 140, 220), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=95)
        return pixels
    pixels = _pattern(size, mode, seed)
    if mode == "P":  # palette indices 0..3 into black, red, green, blue
        image = Image.new("P", size)
        image.putdata(pixels.flatten().tolist())
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    else:
        image = Image.fromarray(pixels)
    image.save(path)
    return pixels


def _same_pixels(image: Image.Image, expected: np.ndarray, jpeg: bool = False) -> bool:
    actual = np.asarray(image).astype(int)
    if actual.shape != expected.shape:
        return False
    return bool(np.abs(actual - expected).max() <= (4 if jpeg else 0))


def _transforms_ok(image: Image.Image | torch.Tensor) -> None:
    out = TRANSFORM(image)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)


# ---------------------------------------------------------------- files and templates


def test_image_files_load_fully_close_and_label(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.png", (3, 2), "RGBA", 1)
    _write(tmp_path / "b.png", (4, 4), "L", 2)
    (tmp_path / "bad.jpg").write_bytes(GARBAGE)
    paths = [tmp_path / "a.png", tmp_path / "bad.jpg", tmp_path / "missing.png", tmp_path / "b.png"]
    ok, bad = readable_images(paths)
    assert ok == [tmp_path / "a.png", tmp_path / "b.png"] and bad == [tmp_path / "bad.jpg", tmp_path / "missing.png"]

    item = ImageFiles(ok, [5, 7])[0]
    assert item["label"] == 5 and item["image"].mode == "RGBA" and _same_pixels(item["image"], a)
    assert getattr(item["image"], "fp", None) is None  # the file is closed, the pixels stay
    assert "label" not in ImageFiles(ok)[1]


def test_template_lists_are_clip_s() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert IMAGENET_TEMPLATES[35] == "a {} in a video game." and IMAGENET_TEMPLATES[59] == "itap of the {}."
    assert (
        len(CIFAR_TEMPLATES) == 18
        and CIFAR_TEMPLATES[0] == "a photo of a {}."
        and CIFAR_TEMPLATES[-1] == "a photo of the big {}."
    )
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES + CIFAR_TEMPLATES)


def test_read_templates(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# prompts\n\na photo of a {}.\n   a drawing of a {}.  \n# end\n")
    assert read_templates(good) == ["a photo of a {}.", "a drawing of a {}."]

    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\n\na photo of a cat.\n")
    with pytest.raises(UserError, match=r"bad.txt, line 3.*'\{\}'"):
        read_templates(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no templates"):
        read_templates(empty)
    with pytest.raises(UserError, match="does not exist"):
        read_templates(tmp_path / "nope.txt")


# ---------------------------------------------------------------- digits


def test_digits_suite_sizes_split_and_pixel_mapping() -> None:
    suite = digits_suite(seed=0)
    assert suite.name == "digits" and suite.classnames[0] == "zero" and suite.classnames[9] == "nine"
    assert len(suite.classnames) == 10 and all("{}" in t for t in suite.templates)
    assert len(suite.train) + len(suite.test) == 1797 and abs(len(suite.train) - len(suite.test)) <= 1
    test_counts = Counter(suite.test[i]["label"] for i in range(len(suite.test)))
    assert set(test_counts) == set(range(10)) and all(85 <= n <= 95 for n in test_counts.values())  # stratified

    items = [suite.train[i] for i in range(len(suite.train))] + [suite.test[i] for i in range(len(suite.test))]
    assert all(item["image"].mode == "L" and item["image"].size == (8, 8) for item in items)
    # Every original image appears exactly once, with value v mapped to round(v * 255 / 16).
    digits = load_digits()
    mapping = {v: int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}  # 8 -> 128, 16 -> 255, 1 -> 16
    expected = Counter(
        (bytes(np.vectorize(mapping.get)(img.astype(int)).astype(np.uint8).flatten()), int(y))
        for img, y in zip(digits.images, digits.target, strict=True)
    )
    assert Counter((np.asarray(item["image"]).tobytes(), item["label"]) for item in items) == expected

    again, other = digits_suite(seed=0), digits_suite(seed=1)
    assert [again.test[i]["label"] for i in range(50)] == [suite.test[i]["label"] for i in range(50)]
    assert any(
        not np.array_equal(np.asarray(other.test[i]["image"]), np.asarray(suite.test[i]["image"])) for i in range(20)
    )
    _transforms_ok(suite.test[0]["image"])
    with pytest.raises(UserError, match="test_fraction"):
        digits_suite(test_fraction=1.0)


# ---------------------------------------------------------------- image folders


def test_imagefolder_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    written = {  # relative path -> (size, mode, label); sizes are unique so items can be matched
        "golden_retriever/a.png": ((5, 7), "RGB", 0),
        "golden_retriever/sub/b.jpg": ((6, 4), "RGB", 0),
        "tabby_cat/c.png": ((9, 3), "L", 1),
        "tabby_cat/d.png": ((4, 9), "RGBA", 1),
        "zebra/e.png": ((7, 7), "P", 2),
    }
    pixels = {
        size: (_write(root / rel, size, mode, i), label, rel.endswith(".jpg"))
        for i, (rel, (size, mode, label)) in enumerate(written.items())
    }
    (root / "zebra" / "broken.jpg").write_bytes(GARBAGE)
    (root / "zebra" / "notes.txt").write_text("not an image")
    _write(root / ".hidden" / "x.png", (2, 2), "RGB")
    (root / "empty_dir").mkdir()

    with pytest.warns(UserWarning, match=r"imagefolder .*pets: skipped 1 unreadable images of 6: zebra/broken.jpg"):
        suite = imagefolder_suite(root)
    assert suite.name == "pets" and suite.classnames == ["golden retriever", "tabby cat", "zebra"]
    assert suite.train is None and suite.templates == list(IMAGENET_TEMPLATES) and len(suite.test) == 5
    labels = [suite.test[i]["label"] for i in range(5)]
    assert labels == [0, 0, 1, 1, 2]  # torchvision order: classes sorted, files sorted
    for i in range(5):
        image = suite.test[i]["image"]
        expected, label, jpeg = pixels[image.size]
        assert suite.test[i]["label"] == label and _same_pixels(image, expected, jpeg)
        _transforms_ok(image)

    with pytest.warns(UserWarning, match="broken.jpg"):
        named = imagefolder_suite(root, templates=["a {}."], name="mine")
    assert named.name == "mine" and named.templates == ["a {}."]


def test_imagefolder_train_and_val_splits(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _write(tmp_path / split / cls / f"{i}.png", (4 + i, 4), "RGB", i)
    suite = imagefolder_suite(tmp_path)
    assert suite.classnames == ["cat", "dog"] and len(suite.train) == 6 and len(suite.test) == 4
    assert [suite.test[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    assert [suite.train[i]["image"].size for i in range(3)] == [(4, 4), (5, 4), (6, 4)]

    _write(tmp_path / "train" / "eel" / "0.png", (3, 3), "RGB")
    with pytest.raises(UserError, match=r"only in train/: \['eel'\], only in val/: none"):
        imagefolder_suite(tmp_path)


def test_imagefolder_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not a directory; expected ROOT/<class>/<image>"):
        imagefolder_suite(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    _write(tmp_path / "flat" / "loose.png", (2, 2), "RGB")  # an image outside any class folder
    with pytest.raises(UserError, match=r"no class folders with images .*expected ROOT/<class>/<image>"):
        imagefolder_suite(tmp_path / "flat")
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.jpg").write_bytes(GARBAGE)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"), pytest.raises(UserError, match="no readable images"):
        imagefolder_suite(tmp_path / "bad")


# ---------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str (BINSTRING) and names numpy 1's modules, as the
    official CIFAR files (pickled by Python 2) do; loaded with encoding="bytes" they become bytes."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        short = len(data) < 256
        self.write(
            (pickle.SHORT_BINSTRING + bytes([len(data)]))
            if short
            else (pickle.BINSTRING + struct.pack("<i", len(data)))
        )
        self.write(data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str


def _dump(path: Path, obj: object, py2: bool = False) -> None:
    """Pickle at protocol 2: as Python 3 writes it, or (py2) as the official files are written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if py2:
        buffer = io.BytesIO()
        _Py2Pickler(buffer, protocol=2).dump(obj)
        path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    else:
        with path.open("wb") as f:
            pickle.dump(obj, f, protocol=2)


def _cifar_batch(n: int, labels_key: bytes, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        labels_key: rng.integers(0, num_classes, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _write_cifar10(root: Path) -> dict[str, dict]:
    directory = root / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": _cifar_batch(2, b"labels", 10, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(3, b"labels", 10, 9)
    for name, batch in batches.items():
        _dump(directory / name, batch, py2=True)
    _dump(
        directory / "batches.meta",
        {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 2, b"num_vis": 3072},
        py2=True,
    )
    return batches


def _check_rows(dataset, batch: dict, labels_key: bytes) -> None:
    assert len(dataset) == len(batch[b"data"])
    for i, row in enumerate(batch[b"data"]):
        item = dataset[i]
        image = item["image"]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and item["label"] == batch[labels_key][i]
        # Rows are R, G, B planes, each 32 rows of 32 pixels.
        assert image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32] and image[1, 0, 0] == row[1024]
        assert image[2, 31, 31] == row[3071] and image[2, 5, 7] == row[2048 + 5 * 32 + 7]
        _transforms_ok(image)


def test_cifar10_from_directory_or_parent(tmp_path: Path) -> None:
    """Python-2-style pickles (numpy.core names, str data) like the official archive."""
    batches = _write_cifar10(tmp_path)
    assert b"numpy.core.multiarray" in (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        suite = cifar_suite(root, "cifar10")
        assert suite.name == "cifar10" and suite.classnames == [n.decode() for n in CIFAR10_NAMES]
        assert suite.templates == list(CIFAR_TEMPLATES)
        _check_rows(suite.test, batches["test_batch"], b"labels")
        assert len(suite.train) == 10
        train_rows = {
            key: np.concatenate([batches[f"data_batch_{i}"][key] for i in range(1, 6)]) for key in (b"data", b"labels")
        }
        _check_rows(suite.train, train_rows, b"labels")


def test_cifar100_fine_labels_and_names(tmp_path: Path) -> None:
    """Python 3 protocol-2 pickles (a re-saved copy): bytes arrive through _codecs.encode."""
    directory = tmp_path / "cifar-100-python"
    names = [f"class_{i}".encode() for i in range(98)] + [b"aquarium_fish", b"maple_tree"]
    train, test = _cifar_batch(4, b"fine_labels", 100, 1), _cifar_batch(3, b"fine_labels", 100, 2)
    for name, batch in (("train", train), ("test", test)):
        batch[b"coarse_labels"] = [0] * len(batch[b"fine_labels"])
        _dump(directory / name, batch)
    _dump(directory / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"aquatic_mammals"]})

    suite = cifar_suite(directory, "cifar100")
    assert suite.name == "cifar100" and len(suite.classnames) == 100
    assert suite.classnames[-2:] == ["aquarium fish", "maple tree"]
    _check_rows(suite.train, train, b"fine_labels")
    _check_rows(suite.test, test, b"fine_labels")


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Print:
    def __reduce__(self):
        return print, ("pickle ran code",)


@pytest.mark.parametrize("payload", ["shell", "print"])
def test_cifar_refuses_pickles_that_call_code(tmp_path: Path, payload: str, capsys: pytest.CaptureFixture) -> None:
    batches = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = _Shell(marker) if payload == "shell" else _Print()
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], b"labels": evil})
    with pytest.raises(UserError, match=r"test_batch: refusing to unpickle (posix\.system|__builtin__\.print)"):
        cifar_suite(tmp_path, "cifar10")
    assert not marker.exists() and "pickle ran code" not in capsys.readouterr().out


def test_cifar_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"expected cifar-10-batches-py/ .*data_batch_1"):
        cifar_suite(tmp_path, "cifar10")
    with pytest.raises(UserError, match=r"expected cifar-100-python/ .*train, test, meta"):
        cifar_suite(tmp_path, "cifar100")
    with pytest.raises(UserError, match="unknown CIFAR variant"):
        cifar_suite(tmp_path, "cifar20")
    batches = _write_cifar10(tmp_path)
    _dump(
        tmp_path / "cifar-10-batches-py" / "data_batch_3",
        {**batches["data_batch_3"], b"data": np.zeros((2, 10), np.uint8)},
    )
    with pytest.raises(UserError, match=r"data_batch_3 is not a CIFAR batch"):
        cifar_suite(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(GARBAGE)
    with pytest.raises(UserError, match=r"data_batch_3 is not a readable CIFAR pickle"):
        cifar_suite(tmp_path, "cifar10")


# ---------------------------------------------------------------- Karpathy retrieval


def _karpathy(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "coco"
    pixels = {
        "img1.png": _write(root / "val2014" / "img1.png", (5, 4), "RGB", 1),
        "img2.png": _write(root / "val2014" / "img2.png", (6, 4), "L", 2),
        "img4.png": _write(root / "val2014" / "img4.png", (3, 3), "RGB", 4),
        "img5.png": _write(root / "train2014" / "img5.png", (7, 4), "RGB", 5),
    }
    (root / "val2014" / "broken.jpg").write_bytes(GARBAGE)

    def row(filepath: str, filename: str, split: str, raws: list[str]) -> dict:
        sentences = [{"raw": r, "tokens": r.lower().split(), "imgid": 0, "sentid": 0} for r in raws]
        return {
            "filepath": filepath,
            "filename": filename,
            "split": split,
            "imgid": 0,
            "cocoid": 1,
            "sentences": sentences,
        }

    data = {
        "dataset": "coco",
        "images": [
            row("val2014", "img1.png", "test", ["  A man rides a bike. ", "Someone cycling."]),
            row("val2014", "img2.png", "test", ["", "A cat."]),
            row("val2014", "img3.png", "test", ["Missing file."]),
            row("val2014", "img4.png", "test", ["", "   "]),
            row("val2014", "broken.jpg", "test", ["Corrupt."]),
            row("train2014", "img5.png", "restval", ["A train image."]),
        ],
    }
    path = root / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path, pixels


def test_karpathy_split_captions_and_skips(tmp_path: Path) -> None:
    path, pixels = _karpathy(tmp_path)
    with pytest.warns(UserWarning) as record:
        suite = karpathy_suite(path)
    assert len(record) == 1  # one warning per suite
    message = str(record[0].message)
    assert "skipped 2 missing or unreadable images of 5: val2014/img3.png, val2014/broken.jpg" in message
    assert (
        "skipped 3 empty captions of 8" in message
        and "skipped 1 images without captions of 5: val2014/img4.png" in message
    )

    assert suite.name == "coco" and suite.captions == [["A man rides a bike.", "Someone cycling."], ["A cat."]]
    assert len(suite.images) == 2
    assert _same_pixels(suite.images[0]["image"], pixels["img1.png"]) and _same_pixels(
        suite.images[1]["image"], pixels["img2.png"]
    )
    assert "label" not in suite.images[0]
    for i in range(2):
        _transforms_ok(suite.images[i]["image"])

    restval = karpathy_suite(path, split="restval", name="coco-restval")
    assert restval.name == "coco-restval" and restval.captions == [["A train image."]]
    assert _same_pixels(restval.images[0]["image"], pixels["img5.png"])


def test_karpathy_flickr_with_images_root(tmp_path: Path) -> None:
    image = _write(tmp_path / "flickr30k-images" / "1000.jpg", (8, 6), "RGB", 3)
    path = tmp_path / "meta" / "dataset_flickr30k.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "dataset": "flickr30k",
                "images": [
                    {"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "Two dogs play."}]},
                ],
            }
        )
    )
    suite = karpathy_suite(path, images_root=tmp_path / "flickr30k-images")
    assert suite.name == "flickr30k" and suite.captions == [["Two dogs play."]]
    assert _same_pixels(suite.images[0]["image"], image, jpeg=True)
    with pytest.warns(UserWarning, match="skipped 1 missing"), pytest.raises(UserError, match="pass images_root"):
        karpathy_suite(path)  # images are not next to the JSON


def test_karpathy_user_errors(tmp_path: Path) -> None:
    path, _ = _karpathy(tmp_path)
    with pytest.raises(UserError, match=r"split 'val'; the file has splits \['restval', 'test'\]"):
        karpathy_suite(path, split="val")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "x"}]}))
    with pytest.raises(UserError, match=r"not a Karpathy split file; expected .*\"sentences\""):
        karpathy_suite(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        karpathy_suite(broken)
    with pytest.raises(UserError, match="no file at"):
        karpathy_suite(tmp_path / "missing.json")


# ---------------------------------------------------------------- probe files


def test_probe_file_list_form_with_skips(tmp_path: Path) -> None:
    a = _write(tmp_path / "img" / "a.png", (4, 5), "RGBA", 1)
    b = _write(tmp_path / "img" / "b.png", (5, 5), "P", 2)
    (tmp_path / "img" / "bad.jpg").write_bytes(GARBAGE)
    rows = [
        {"image": "img/a.png", "positive": "a red circle", "negatives": ["a blue circle", "a red square"]},
        {"image": "img/b.png", "positive": "two dogs", "negatives": "one dog"},
        {"image": "img/a.png", "positive": "  ", "negatives": ["x"]},
        {"image": "img/a.png", "positive": "y", "negatives": []},
        {"image": "img/missing.png", "positive": "y", "negatives": ["z"]},
        {"image": "img/bad.jpg", "positive": "y", "negatives": ["z"]},
    ]
    path = tmp_path / "binding.json"
    path.write_text(json.dumps(rows))
    with pytest.warns(UserWarning) as record:
        suite = probe_file_suite(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert (
        "skipped 1 rows with an empty true caption of 6" in message
        and "skipped 1 rows without false captions of 6" in message
    )
    assert "skipped 2 rows with a missing or unreadable image of 6: img/missing.png, img/bad.jpg" in message

    assert suite.name == "binding" and len(suite.items) == 2
    first, second = suite.items[0], suite.items[1]
    assert first["positive"] == "a red circle" and first["negatives"] == ["a blue circle", "a red square"]
    assert second["positive"] == "two dogs" and second["negatives"] == ["one dog"]
    assert _same_pixels(first["image"], a) and _same_pixels(second["image"], b)
    for item in (first, second):
        _transforms_ok(item["image"])


def test_probe_file_sugarcrepe_form(tmp_path: Path) -> None:
    image = _write(tmp_path / "val2017" / "000000397133.png", (6, 3), "L", 4)
    path = tmp_path / "sugar" / "replace_att.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "0": {
                    "filename": "000000397133.png",
                    "caption": "A man in a white shirt.",
                    "negative_caption": "A man in a black shirt.",
                },
            }
        )
    )
    suite = probe_file_suite(path, images_root=tmp_path / "val2017")
    assert suite.name == "replace_att" and len(suite.items) == 1
    item = suite.items[0]
    assert item["positive"] == "A man in a white shirt." and item["negatives"] == ["A man in a black shirt."]
    assert _same_pixels(item["image"], image)


def test_probe_file_aro_form_crops_boxes(tmp_path: Path) -> None:
    image = _write(tmp_path / "images" / "2.png", (10, 8), "RGB", 6)
    path = tmp_path / "visual_genome_relation.json"
    path.write_text(
        json.dumps(
            [
                {
                    "image_path": "images/2.png",
                    "true_caption": "the horse is eating the grass",
                    "false_caption": "the grass is eating the horse",
                    "bbox_x": 2,
                    "bbox_y": 1,
                    "bbox_w": 4,
                    "bbox_h": 3,
                },
                {"image_path": "images/2.png", "true_caption": "a dog", "false_caption": ["a cat", "a cow"]},
            ]
        )
    )
    suite = probe_file_suite(path, name="vg_relation")
    assert suite.name == "vg_relation" and len(suite.items) == 2
    cropped, whole = suite.items[0], suite.items[1]
    assert cropped["negatives"] == ["the grass is eating the horse"] and whole["negatives"] == ["a cat", "a cow"]
    assert _same_pixels(cropped["image"], image[1:4, 2:6]) and _same_pixels(whole["image"], image)
    _transforms_ok(cropped["image"])


def test_probe_file_user_errors(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"img": "a.png", "text": "x"}]))
    with pytest.raises(
        UserError, match=r'not a probe file; expected .*"positive".*"negative_caption".*"false_caption"'
    ):
        probe_file_suite(wrong)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"image": "missing.png", "positive": "x", "negatives": ["y"]}]))
    with pytest.warns(UserWarning, match="missing.png"), pytest.raises(UserError, match="no usable rows"):
        probe_file_suite(empty)
