"""Local image-text data: every format built in tmp_path from real files (PIL images in several
modes, one corrupt image, one empty caption), the transforms, the error messages, and a real
`python -m experiments fit` whose checkpoint the analysis loads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.errors import UserError
from datamodules.image_text import ImageTextDataModule
from datamodules.tokenizer import BPETokenizer, WordTokenizer
from datamodules.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform, TrainImageTransform, to_rgb

from helpers import CONFIGS
from helpers.cli import run_cli
from helpers.image_text import GOOD, RED, SIZE, WORDS, datamodule, make_csv, make_format, make_shards


def _expected_pixel(rgb: tuple[int, int, int]) -> torch.Tensor:
    return (torch.tensor(rgb) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


# ---- transforms --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_becomes_rgb_in_both_transforms(mode: str) -> None:
    image = Image.fromarray(np.full((20, 30), 40000, np.uint16)) if mode == "I;16" else Image.new(mode, (30, 20))
    assert to_rgb(image).mode == "RGB"
    if mode == "I;16":  # rescaled from 16 bits, not clipped to white
        assert to_rgb(image).getpixel((0, 0)) == (156, 156, 156)
    for transform in (TrainImageTransform(SIZE, CLIP_MEAN, CLIP_STD), EvalImageTransform(SIZE, CLIP_MEAN, CLIP_STD)):
        out = transform(image)
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32


def test_transforms_normalise_with_clip_statistics() -> None:
    red = Image.new("RGB", (50, 30), RED)
    for transform in (TrainImageTransform(SIZE, CLIP_MEAN, CLIP_STD), EvalImageTransform(SIZE, CLIP_MEAN, CLIP_STD)):
        out = transform(red)
        torch.testing.assert_close(out[:, SIZE // 2, SIZE // 2], _expected_pixel(RED), atol=1e-4, rtol=0)
    # The eval transform's behaviour for tensors at size (ShapesWorld renders) is unchanged.
    tensor = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    eval_transform = EvalImageTransform(SIZE, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(eval_transform(tensor), (tensor.float() / 255 - 0.5) / 0.25)
    # The random crop keeps 90-100% of the area: a left-half-black image keeps both halves.
    half = Image.new("RGB", (64, 64), RED)
    half.paste((0, 0, 0), (0, 0, 32, 64))
    out = TrainImageTransform(SIZE, CLIP_MEAN, CLIP_STD)(half)
    torch.testing.assert_close(out[:, 8, -1], _expected_pixel(RED), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 8, 0], _expected_pixel((0, 0, 0)), atol=1e-3, rtol=0)


# ---- map-style formats ------------------------------------------------------------------------
MAP_FORMATS = ["imagefolder", "csv", "tsv", "parquet-hf-image", "parquet-bytes", "webdataset"]


@pytest.mark.parametrize("kind", MAP_FORMATS)
def test_evaluation_set_drops_and_counts_bad_rows_and_batches_are_right(kind: str, tmp_path: Path) -> None:
    format, files = make_format(kind, tmp_path)
    dm = datamodule(tmp_path, format, files, val_files=files)
    with pytest.warns(UserWarning, match=r"skipped 1 empty captions of 8.*skipped 1 unreadable images of 8"):
        dm.setup("validate")
    assert dm.skipped["val"] == {"empty captions": 1, "unreadable images": 1}
    assert [t.name for t in dm.eval_tasks("validate")] == ["retrieval/image_text_val"] and dm.eval_tasks("test") == []
    batches = list(dm.val_dataloader())
    assert [len(b["index"]) for b in batches] == [4, 2]  # 6 good rows, no incomplete batch dropped
    batch = batches[0]
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (4, 8) and batch["text"].dtype == torch.long
    assert batch["task"].tolist() == [0] * 4 and batch["label"].tolist() == [-1] * 4
    images = {
        dm.tokenizer.decode(ids): image
        for b in batches
        for ids, image in zip(b["text"].tolist(), b["image"], strict=True)
    }
    assert set(images) == GOOD
    torch.testing.assert_close(images["a red square"][:, SIZE // 2, SIZE // 2], _expected_pixel(RED), atol=1e-4, rtol=0)
    # Every mode reached the model as RGB: the yellow CMYK JPEG has red and green, no blue.
    assert (images["a yellow square"][:2].mean((1, 2)) > 1.0).all() and images["a yellow square"][2].mean() < -1.0


@pytest.mark.parametrize("kind", ["imagefolder", "csv", "parquet-bytes"])
def test_training_drops_empty_captions_and_replaces_unreadable_images(kind: str, tmp_path: Path) -> None:
    format, files = make_format(kind, tmp_path)
    dm = datamodule(tmp_path, format, files)
    with pytest.warns(UserWarning, match="skipped 1 empty captions of 8"):
        dm.setup("fit")
    assert len(dm.train_set) == 7 and dm.skipped["train"] == {"empty captions": 1, "unreadable images": 0}
    assert dm.val_dataloader() == [] and dm.eval_tasks("validate") == []  # no val_files: no validation
    with pytest.warns(UserWarning, match=r"unreadable image (.*broken.png|pairs.parquet row 5)"):
        (batch,) = list(dm.train_dataloader())  # one epoch of 7 rows = one full batch
    assert batch["skipped"].item() == 1  # the broken image, replaced once
    assert batch["image"].shape == (7, 3, SIZE, SIZE) and batch["text"].shape[0] == 7
    captions = [dm.tokenizer.decode(ids) for ids in batch["text"].tolist()]
    assert "a broken picture" not in captions and set(captions) <= GOOD and len(set(captions)) == 6
    # The replacement is deterministic (the same row on every epoch, rank and resume) and counted.
    rows = dm.train_set
    (broken,) = [
        i
        for i in range(len(rows))
        if rows.locate(i)[0].rows[rows.locate(i)[1]][dm.caption_column] == "a broken picture"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, again = rows[broken], rows[broken]
    assert first["skipped"] == again["skipped"] == 1 and first["index"] == broken
    assert first["caption"] == again["caption"] != "a broken picture" and torch.equal(first["image"], again["image"])


def test_datamodule_state_and_hparams_hold_no_objects(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, "csv", "unused.csv")  # nothing is read before setup
    assert dm.state_dict() == {"tokenizer": {}}
    dm.load_state_dict(dm.state_dict())  # resuming with the same tokenizer
    with pytest.raises(UserError, match="not the one this checkpoint was trained with"):
        dm.load_state_dict({"tokenizer": {"tokenizer_json": "{}"}})  # a tokenizer file retrained since
    assert "tokenizer" not in dm.hparams and dm.hparams.image_size == SIZE  # an object is not a config
    assert dm.vocab_size == 4 + len(WORDS) and dm.context_length == 8
    assert (dm.image_column, dm.caption_column) == ("filepath", "title")


# ---- webdataset streaming ---------------------------------------------------------------------
def test_stream_skips_and_counts_bad_rows_and_splits_by_rank(tmp_path: Path) -> None:
    make_shards(tmp_path / "shards")
    files = str(tmp_path / "shards" / "*.tar")
    dm = datamodule(tmp_path, "webdataset", files, batch_size=3, shuffle_buffer=1)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first_pass = [next(loader), next(loader)]  # 6 good rows = one pass over both shards
        second_pass = [next(loader), next(loader)]  # the stream goes on: max_steps ends a run
    for batches in (first_pass, second_pass):
        assert sum(b["skipped"].item() for b in batches) == 2  # the broken image and the empty caption
        assert {dm.tokenizer.decode(ids) for b in batches for ids in b["text"].tolist()} == GOOD
    assert first_pass[0]["image"].shape == (3, 3, SIZE, SIZE) and "index" not in first_pass[0]

    # Two ranks split the shards (split_dataset_by_node): disjoint shares that cover the data.
    dataset = dm.train_dataloader().dataset
    shares = []
    for rank in range(2):
        dataset.rank, dataset.world_size = rank, 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = iter(dataset)
            shares.append({next(items)["caption"] for _ in range(6)})  # a pass or more of its share
    assert not shares[0] & shares[1] and shares[0] | shares[1] == GOOD

    # Resampled: shards drawn with replacement, forever, on every rank without a split.
    dataset.resampled = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = iter(dataset)
        drawn = [next(items) for _ in range(20)]
    assert {item["caption"] for item in drawn} <= GOOD and all(item["image"].shape == (3, SIZE, SIZE) for item in drawn)


# ---- user mistakes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "found"),
    [
        ("csv", "filepath, title, extra"),
        ("imagefolder", "image, text"),
        ("parquet-bytes", "image, text"),
        ("webdataset", "jpg, txt, __key__, __url__"),
    ],
)
def test_wrong_column_name_lists_the_columns_found(kind: str, found: str, tmp_path: Path) -> None:
    format, files = make_format(kind, tmp_path)
    dm = datamodule(tmp_path, format, files, caption_column="caption")
    with pytest.raises(UserError, match=f"no column 'caption' \\(caption_column\\); columns found: {found}"):
        dm.setup("fit")


def test_missing_paths_and_empty_globs_are_named(tmp_path: Path) -> None:
    cases = [
        ("csv", str(tmp_path / "nope.csv"), f"data train_files: {tmp_path / 'nope.csv'} does not exist"),
        ("parquet", str(tmp_path / "*.parquet"), f"data train_files: no files match {tmp_path / '*.parquet'}"),
        ("webdataset", str(tmp_path), f"no .tar/.tar.gz/.tgz files in folder {tmp_path}"),
        ("imagefolder", str(tmp_path), "has no metadata.jsonl / metadata.csv / metadata.parquet"),
        ("csv", [], "data train_files is an empty list"),
    ]
    for format, files, message in cases:
        with pytest.raises(UserError, match=message.replace("*", r"\*").replace(".", r"\.")):
            datamodule(tmp_path, format, files).setup("fit")
    with pytest.raises(UserError, match="unknown format 'jsonl'"):
        datamodule(tmp_path, "jsonl", "x")


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_captions_the_tokenizer_mostly_cannot_read_stop_the_fit(kind: str, tmp_path: Path) -> None:
    """A tokenizer without the captions' words: a sample of the rows (of a stream, its first rows)
    is checked when the data is set up for fit (datamodules.tokenizer.coverage)."""
    format, files = make_format(kind, tmp_path)
    dm = datamodule(tmp_path, format, files, tokenizer=WordTokenizer(["a"], context_length=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped rows
        with pytest.raises(UserError, match=r"maps 66.7% of the tokens of 7 sampled training captions .* e.g. 'a "
                           r"\w+ (square|picture)' \(2 of 3 tokens unknown\): choose a tokenizer"):  # fmt: skip
            dm.setup("fit")


def test_a_crop_scale_outside_the_image_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.init_args.crop_scale must be two area fractions .* got \(0.9, 1.2\)"):
        datamodule(tmp_path, "csv", "x", crop_scale=(0.9, 1.2))


def test_too_few_rows_for_one_batch_is_an_error(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, "csv", str(make_csv(tmp_path)), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    with pytest.raises(UserError, match="7 usable rows, fewer than one batch"):
        dm.train_dataloader()


# ---- the real entry point and the analysis -----------------------------------------------------
@pytest.mark.cli
def test_fit_on_csv_then_analysis_loads_the_checkpoint(tmp_path: Path) -> None:
    """A trained BPE tokenizer, the csv preset, fit; then the analysis rebuilds the datamodule and
    the tokenizer from the checkpoint alone, after the tokenizer file is gone."""
    from datamodules.tokenizer.bpe import train_bpe, write_tokenizer

    pairs = make_csv(tmp_path / "data")
    vocabulary = write_tokenizer(train_bpe([" ".join(WORDS)] * 4, vocab_size=200, min_frequency=1), tmp_path / "tok")
    bpe = {
        "class_path": "datamodules.tokenizer.BPETokenizer",
        "init_args": {"path": str(vocabulary), "context_length": 8},
    }
    overrides = {
        "data": {"init_args": {
            "train_files": str(pairs), "test_files": str(pairs),  # no val_files: an empty validation loop
            "tokenizer": bpe,
            "image_size": 32, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "cache_dir": str(tmp_path / "hf-cache"),
        }},
        "model": {"text_tower": {"init_args": {"width": 32, "depth": 1, "heads": 2}}, "warmup_steps": 1},
        "trainer": {"max_steps": 2, "val_check_interval": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
    }  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(overrides))
    preset = CONFIGS / "data" / "image_text_csv.yaml"
    result = run_cli(
        "fit", "--config", str(CONFIGS / "clip.yaml"), "--config", str(preset), "--config", str(tmp_path / "tiny.yaml"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train (csv): skipped 1 empty captions of 8: images/nocaption.png" in result.stderr
    assert (
        "test (csv): skipped 1 empty captions of 8: images/nocaption.png; skipped 1 unreadable images of 8"
        in result.stderr
    )
    (run,) = (tmp_path / "runs").glob("*/version_0")
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["data/skipped_rows"] >= 1  # the empty caption, at least
    for key in ("i2t_R@1", "t2i_R@1"):
        assert 0.0 <= metrics[f"retrieval/image_text_test/{key}"] <= 1.0
    assert not any(key.startswith("retrieval/image_text_val") for key in metrics)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["datamodule_hyper_parameters"]["tokenizer"]["class_path"] == "datamodules.tokenizer.BPETokenizer"
    expected_ids = BPETokenizer(str(vocabulary), 8)(sorted(GOOD))
    vocabulary.unlink()

    # The analysis rebuilds the datamodule (tokenizer, image transform) from the checkpoint alone.
    from analysis.__main__ import run as analysis
    from analysis.checkpoint import load_checkpoint

    loaded = load_checkpoint(run)
    assert isinstance(loaded.datamodule, ImageTextDataModule) and loaded.image_transform.image_size == 32
    assert torch.equal(loaded.tokenizer(sorted(GOOD)), expected_ids)  # restored from the checkpoint
    classes = tmp_path / "classes"
    for color, rgb in (("red", RED), ("blue", (0, 0, 255))):
        (classes / color).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), rgb).save(classes / color / f"{i}.png")
    suite = f"imagefolder:{classes}"
    zeroshot = analysis(
        ["zeroshot", "--ckpt", str(run), "--suite", suite, "--no-linear-probe", "--out", str(tmp_path / "a")]
    )
    assert [0.0 <= value <= 1.0 for key, value in zeroshot.items() if key.endswith("top1")] == [True], zeroshot
    embedded = analysis(["embed", "--ckpt", str(run), "--suite", suite, "--out", str(tmp_path / "a")])
    payload = torch.load(embedded["classes"], weights_only=True)
    assert payload["image"].shape[0] == 4
