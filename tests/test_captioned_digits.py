"""Captioned real digits on disk (datamodules.captioned) and what the image-text datamodule and the
module evaluate with classes: zero-shot tasks, label positives, the linear probe."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from sklearn.datasets import load_digits

from common.errors import UserError
from common.evaluation import EvalTask
from datamodules.captioned.digits import (
    DIGIT_ZH,
    EN_PHRASINGS,
    EN_TEMPLATES,
    ZH_PHRASINGS,
    ZH_TEMPLATES,
    build_digits,
    caption,
    vocabulary,
)
from datamodules.image_text import ImageTextDataModule
from datamodules.suites.digits import DIGIT_NAMES
from datamodules.tokenizer import BertTokenizer
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import TextTower, VisionTower

from helpers import CONFIGS

PRESET = yaml.safe_load((CONFIGS / "digits.yaml").read_text())["data"]["init_args"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits(tmp_path_factory.mktemp("data") / "digits")


def _rows(root: Path, split: str) -> list[dict]:
    with (root / f"{split}.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_real_digit_lands_in_one_stratified_split(root: Path) -> None:
    digits = load_digits()
    images = {split: sorted({r["filepath"] for r in _rows(root, split)}) for split in ("train", "val", "test")}
    indices = {split: [int(Path(p).stem) for p in paths] for split, paths in images.items()}
    everything = sorted(i for split in indices.values() for i in split)
    assert everything == list(range(len(digits.target)))  # every digit once, no split shares one
    assert {k: len(v) for k, v in indices.items()} == {"train": 1078, "val": 269, "test": 450}
    assert json.loads((root / "BUILD.json").read_text())["splits"]["train"] == {"images": 1078, "rows": 10780}
    for split, share in (("train", 0.60), ("test", 0.25)):
        counts = np.bincount(digits.target[indices[split]], minlength=10)
        assert np.all(np.abs(counts - share * np.bincount(digits.target)) <= 1.5), (split, counts)
    first = _rows(root, "test")[0]  # the real pixels, value * 255 / 16
    pixels = np.asarray(Image.open(root / first["filepath"]))
    index = int(Path(first["filepath"]).stem)
    assert np.array_equal(pixels, np.rint(digits.images[index] * 255 / 16).astype(np.uint8))
    assert int(first["label"]) == digits.target[index]


def test_captions_name_the_digit_in_both_languages(root: Path) -> None:
    train = _rows(root, "train")
    per_image: dict[str, list[dict]] = {}
    for row in train:
        per_image.setdefault(row["filepath"], []).append(row)
    for rows in list(per_image.values())[:50]:
        label = int(rows[0]["label"])
        assert sorted(r["title"] for r in rows) == sorted(caption(label, p) for p in (*EN_PHRASINGS, *ZH_PHRASINGS))
    for row in _rows(root, "test"):
        label, title = int(row["label"]), row["title"]
        names = (DIGIT_NAMES[label], str(label)) if row["language"] == "en" else (DIGIT_ZH[label], str(label))
        assert any(name in title for name in names), row
        others = [d for d in range(10) if d != label]
        assert not any(DIGIT_ZH[d] in title or str(d) in title for d in others), row
    languages = [r["language"] for r in _rows(root, "test")]
    assert abs(languages.count("en") - languages.count("zh")) <= 10  # alternating within each digit


def test_the_parquet_copy_holds_the_same_rows(root: Path) -> None:
    for split in ("val", "test"):
        table = pq.read_table(root / "parquet" / f"{split}.parquet").to_pylist()
        rows = _rows(root, split)
        assert [t["text"] for t in table] == [r["title"] for r in rows]
        assert [t["label"] for t in table] == [int(r["label"]) for r in rows]
        for t, r in list(zip(table, rows, strict=True))[:20]:
            assert t["image"]["bytes"] == (root / r["filepath"]).read_bytes()
            assert Image.open(io.BytesIO(t["image"]["bytes"])).size == (8, 8)


def test_a_build_is_kept_and_a_different_one_refused(root: Path, tmp_path: Path) -> None:
    stamp = (root / "BUILD.json").stat().st_mtime_ns
    assert build_digits(root) == root and (root / "BUILD.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="built with seed 0 .* not seed 1"):
        build_digits(root, seed=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a captioned-digits build"):
        build_digits(tmp_path / "other")
    with pytest.raises(UserError, match="notes.txt is a file: give the folder"):
        build_digits(tmp_path / "other" / "notes.txt")


def test_the_preset_tokenizer_covers_every_caption_and_prompt() -> None:
    words = PRESET["tokenizer"]["init_args"]["words"]
    assert [str(w) for w in words] == vocabulary()
    tokenizer = BertTokenizer(words=vocabulary(), context_length=PRESET["tokenizer"]["init_args"]["context_length"])
    wide = BertTokenizer(words=vocabulary(), context_length=64)
    texts = [caption(d, p) for d in range(10) for p in (*EN_PHRASINGS, *ZH_PHRASINGS)]
    texts += [t.format(n) for t in EN_TEMPLATES for n in DIGIT_NAMES] + [
        t.format(n) for t in ZH_TEMPLATES for n in DIGIT_ZH
    ]
    ids, whole = tokenizer(texts), wide(texts)
    assert not (ids == tokenizer.unk_id).any()
    assert torch.equal(ids, whole[:, : ids.shape[1]]) and not whole[:, ids.shape[1] :].any()  # nothing cut
    zeroshot = PRESET["zeroshot"]
    assert zeroshot["digit"] == {"classnames": DIGIT_NAMES, "templates": list(EN_TEMPLATES)}
    assert zeroshot["digit_zh"] == {"classnames": list(DIGIT_ZH), "templates": list(ZH_TEMPLATES)}


def _datamodule(root: Path, **overrides) -> ImageTextDataModule:
    args = {k: PRESET[k] for k in ("label_column", "zeroshot", "retrieval_positives", "probe_train_rows", "image_size")}
    args |= {f"{split}_files": str(root / f"{split}.csv") for split in ("train", "val", "test")}
    tokenizer = BertTokenizer(words=vocabulary(), context_length=16)
    return ImageTextDataModule(
        tokenizer=tokenizer, name="digits", num_workers=0, eval_batch_size=4096, **args | overrides
    )


def test_the_datamodule_serves_classes_prompts_and_probe_rows(root: Path) -> None:
    data = _datamodule(root)
    data.setup("test")
    tasks = data.eval_tasks("test")
    assert [(t.name, t.kind) for t in tasks] == [
        ("retrieval/digits_test", "retrieval"),
        ("zeroshot/digits_test/digit", "zeroshot"),
        ("zeroshot/digits_test/digit_zh", "zeroshot"),
        ("probe_train/digits_train", "probe_train"),
        ("linear_probe/digits_test", "linear_probe"),
    ]
    assert tasks[0].positives == "label" and tasks[4].fit_task == 3
    assert tasks[2].prompts.shape == (10, 3, 16)
    batch = next(iter(data.test_dataloader()))
    test_labels = [int(r["label"]) for r in _rows(root, "test")]
    for task in (0, 1, 4):
        assert batch["label"][batch["task"] == task].tolist() == test_labels
    probe = batch["label"][batch["task"] == 3]
    train = _rows(root, "train")
    assert len(probe) == 1078  # the first row of every training image, once
    assert probe.tolist() == [int(r["label"]) for r in train[::10]]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"label_column": None}, "data.init_args.zeroshot needs each row's class: set data.init_args.label_column"),
        ({"zeroshot": {"d": {"classnames": ["a", "b"], "templates": ["no slot"]}}}, "template 'no slot' has no '{}'"),
        ({"zeroshot": {"d": {"classnames": ["a", "a"], "templates": ["{}"]}}}, "class names repeat"),
        ({"zeroshot": {"d": {"classnames": ["a"]}}}, "must give exactly classnames (a list) and templates"),
        ({"probe_train_rows": -1}, "probe_train_rows must be >= 0, got -1"),
    ],
)
def test_class_options_are_checked_when_built(root: Path, overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{}", r"\{\}")):
        _datamodule(root, **overrides)


def test_labels_must_be_integer_classes_of_the_prompts(root: Path, tmp_path: Path) -> None:
    rows = _rows(root, "test")[:3]
    for bad, message in (
        ("10", "has label 10, outside 0..9"),
        ("seven", "must hold integer classes; row 1 holds 'seven'"),
    ):
        rows[1]["label"] = bad
        path = tmp_path / f"bad-{bad}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "filepath": str(root / r["filepath"])} for r in rows)
        data = _datamodule(root, test_files=str(path), probe_train_rows=0)
        with pytest.raises(UserError, match=message):
            data.setup("test")
    with pytest.raises(UserError, match="no column 'lable' \\(label_column\\)"):
        _datamodule(root, label_column="lable").setup("test")


def _module(tasks: list[EvalTask]) -> tuple[ContrastiveModule, dict]:
    module = ContrastiveModule(
        VisionTower("resnet10t", embed_dim=4), TextTower(vocab_size=8, context_length=4, width=8, heads=2, embed_dim=4),
        [InfoNCE()],
    )  # fmt: skip
    module._trainer = SimpleNamespace(
        world_size=1, global_step=0, state=SimpleNamespace(fn=TrainerFn.TESTING),
        datamodule=SimpleNamespace(eval_tasks=lambda stage: tasks),
    )  # fmt: skip
    logged: dict = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    return module, logged


def test_label_positives_and_the_linear_probe_in_the_module() -> None:
    """Retrieval by label counts any caption of the image's class; the probe fits on its own task's
    rows and scores the others (here separable: every point right)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(6)  # 24 items, 4 classes
    directions = torch.nn.functional.normalize(torch.randn(4, 4, generator=generator), dim=-1)
    noise = 0.05 * torch.randn(24, 4, generator=generator)
    image = torch.nn.functional.normalize(directions[labels] + noise, dim=-1)
    text = torch.nn.functional.normalize(directions[labels], dim=-1)
    tokens = torch.stack([torch.tensor([1, 2 + i % 5, 7, 0]) for i in range(24)])  # captions differ
    outputs = {"image": image.repeat(3, 1), "text": text.repeat(3, 1), "label": labels.repeat(3),
               "task": torch.arange(3).repeat_interleave(24), "index": torch.arange(72), "tokens": tokens.repeat(3, 1)}  # fmt: skip
    tasks = [
        EvalTask("retrieval/x_test", "retrieval", positives="label"),
        EvalTask("probe_train/x_train", "probe_train"),
        EvalTask("linear_probe/x_test", "linear_probe", fit_task=1),
    ]
    module, logged = _module(tasks)
    module._eval_outputs = {k: [v] for k, v in outputs.items()}
    module._evaluate("test")
    assert logged["retrieval/x_test/i2t_R@1"] == 1.0 and logged["retrieval/x_test/t2i_R@1"] == 1.0
    assert logged["linear_probe/x_test/top1"] == 1.0
    assert not any(name.startswith("probe_train/") for name in logged)
    module, logged = _module([EvalTask("retrieval/x_test", "retrieval")])  # by caption: few are identical
    module._eval_outputs = {k: [v[:24]] for k, v in outputs.items()}
    module._evaluate("test")
    assert logged["retrieval/x_test/i2t_R@1"] < 0.5


def test_the_builder_command_writes_and_then_keeps_the_files(tmp_path: Path, monkeypatch, capsys) -> None:
    from datamodules.captioned.__main__ import main

    monkeypatch.setattr("sys.argv", ["python -m datamodules.captioned", "--out", str(tmp_path / "d")])
    main()
    assert '"test": {"images": 450, "rows": 450}' in capsys.readouterr().out
    stamp = (tmp_path / "d" / "BUILD.json").stat().st_mtime_ns
    main()  # a complete build is kept
    assert (tmp_path / "d" / "BUILD.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr("sys.argv", ["python -m datamodules.captioned", "--out", str(tmp_path / "d"), "--seed", "3"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: ")
