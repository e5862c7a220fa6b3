"""A BPE tokenizer trained on caption files by ``python -m datamodules.tokenizer train``: every
caption format read, the suite's id conventions, one-line errors, and the tokenizer saved in a
Lightning checkpoint and restored from it once its file is gone or retrained."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import instantiate_module
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

from analysis.checkpoint import _restore_tokenizer
from common.errors import UserError
from datamodules.tokenizer import BPETokenizer, TextTokenizer
from datamodules.tokenizer.__main__ import main, train

from helpers import REPO

COLORS, SHAPES = ["red", "green", "blue", "yellow"], ["square", "circle", "triangle", "star"]
CAPTIONS = [f"A {c} {s} left of a {c2} {s2}." for c in COLORS for s in SHAPES for c2 in COLORS for s2 in SHAPES]


def write_captions(folder: Path) -> list[Path]:
    """The captions split over one file of each format, with empty captions sprinkled in."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [CAPTIONS[i::5] for i in range(5)]
    (folder / "a.txt").write_text("\n".join(parts[0][:10] + [""] + parts[0][10:]) + "\n")
    (folder / "b.jsonl").write_text(
        "\n".join(json.dumps({"caption": c, "id": i}) for i, c in enumerate(parts[1])) + "\n"
    )
    (folder / "c.json").write_text(json.dumps([{"caption": c} for c in parts[2]] + [{"caption": ""}]))
    for name, delimiter, part in (("d.csv", ",", parts[3]), ("e.tsv", "\t", parts[4])):
        with (folder / name).open("w", newline="") as file:
            writer = csv.writer(file, delimiter=delimiter)
            writer.writerows([["image", "caption"], *([f"{i}.jpg", c] for i, c in enumerate(part)), ["x.jpg", " "]])
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    summary = train(["train", "--captions", *map(str, write_captions(folder / "captions")), "--out", str(folder / "tok"),
                     "--vocab-size", "120", "--min-frequency", "1"])  # fmt: skip
    assert summary["captions"] == len(CAPTIONS) and summary["empty_skipped"] == 4 and summary["files"] == 5
    assert summary["vocab_size"] <= 120 and summary["tokens_per_caption_max"] == 11  # <start> 8 words . <end>
    return folder / "tok" / "tokenizer.json"


def test_trained_tokenizer_follows_the_suite_conventions(trained: Path) -> None:
    tokenizer = BPETokenizer(str(trained), context_length=8)
    assert isinstance(tokenizer, TextTokenizer) and (tokenizer.pad_id, tokenizer.unk_id) == (0, 3)
    assert [tokenizer.tokenizer.token_to_id(t) for t in ("<pad>", "<start>", "<end>", "<unk>")] == [0, 1, 2, 3]
    ids = tokenizer(["  A RED\tsquare  ", "a red square", "a red square left of a blue circle.", "a red ✓"])
    assert ids.shape == (4, 8) and torch.equal(ids[0], ids[1])  # lowercase, whitespace collapsed
    assert ids[1].tolist()[:5] == [1, *ids[1].tolist()[1:4], 2] and set(ids[1, 5:].tolist()) == {0}
    assert ids[2, 0] == 1 and ids[2, -1] == 2 and 0 not in ids[2].tolist()  # truncated, still ends with <end>
    assert 3 in ids[3].tolist()  # a character never seen in training
    assert tokenizer.decode(ids[1]) == "a red square"
    assert tokenizer(["a red square", "a"], pad_to_context=False).shape == (2, 5)
    assert tokenizer.vocab_size == json.loads(trained.read_text())["model"]["vocab"].__len__()


@pytest.mark.cli
def test_the_command_line_entry_point(tmp_path: Path) -> None:
    files = write_captions(tmp_path / "captions")
    env = dict(os.environ, PYTHONPATH=str(REPO), CLIP_VARIANTS_TRACEBACK="")
    args = [
        sys.executable,
        "-m",
        "datamodules.tokenizer",
        "train",
        "--captions",
        str(files[0]),
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "vocab size" in result.stdout and (tmp_path / "out" / "tokenizer.json").is_file()
    bad = subprocess.run(
        [*args[:5], str(tmp_path / "nope.txt"), *args[6:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: caption file not found: {tmp_path / 'nope.txt'}"
    ]


@pytest.mark.parametrize(
    "name, content, column, message",
    [
        ("x.csv", "image,text\na.jpg,a red square\n", "caption", "has no column 'caption'; columns found: image, text"),
        ("x.tsv", "image\ttext\na.jpg\ta red square\n", "capt", "has no column 'capt'; columns found: image, text"),
        ("x.jsonl", '{"caption": "a"}\n{"text": "b", "id": 1}\n', "caption", r"x.jsonl:2: no field 'caption'; found: text, id"),
        ("x.json", '["a red square"]', "caption", "no field 'caption'; found: a str, not an object"),
        ("x.jsonl", "{not json\n", "caption", "x.jsonl:1: not valid JSON"),
        ("x.parquet", "", "caption", "caption files must be one of .txt, .jsonl, .json, .csv, .tsv"),
        ("x.txt", "\n \n", "caption", "no captions in .*x.txt \\(2 empty\\)"),
    ],
)  # fmt: skip
def test_user_mistakes_end_with_one_error_line(
    name, content, column, message, tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / name).write_text(content)
    argv = ["train", "--captions", str(tmp_path / name), "--out", str(tmp_path / "out"), "--column", column]
    with pytest.raises(UserError, match=message):
        train(argv)
    monkeypatch.setattr(sys, "argv", ["python -m datamodules.tokenizer", *argv])
    monkeypatch.delenv("CLIP_VARIANTS_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_a_missing_or_foreign_tokenizer_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: train one with `python -m datamodules.tokenizer train"):
        BPETokenizer(str(tmp_path / "tokenizer.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="is not a tokenizer.json"):
        BPETokenizer(str(tmp_path / "bad.json"))


def test_state_dict_restores_the_tokenizer_without_its_file(trained: Path, tmp_path: Path) -> None:
    tokenizer = BPETokenizer(str(trained), context_length=12)
    state = tokenizer.state_dict()
    assert state == {"tokenizer_json": trained.read_text()}
    restored = BPETokenizer(str(tmp_path / "gone.json"), context_length=12, **state)
    pickled = pickle.loads(pickle.dumps(tokenizer))
    for other in (restored, pickled):
        assert torch.equal(other(CAPTIONS), tokenizer(CAPTIONS)) and other.vocab_size == tokenizer.vocab_size


class TinyData(LightningDataModule):
    """What the suite's datamodules do with a tokenizer: take it as an init argument, save its state."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 4), batch_size=2)

    def state_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.state_dict()}


def test_the_checkpoint_restores_the_trained_tokenizer_once_its_file_is_gone_or_retrained(tmp_path: Path) -> None:
    path = tmp_path / "tok" / "tokenizer.json"
    train(
        [
            "train",
            "--captions",
            *map(str, write_captions(tmp_path / "captions")),
            "--out",
            str(path.parent),
            "--vocab-size",
            "100",
        ]
    )
    config = {  # as LightningCLI records a datamodule's init arguments
        "_class_path": f"{__name__}.TinyData",
        "tokenizer": {
            "class_path": "datamodules.tokenizer.BPETokenizer",
            "init_args": {"path": str(path), "context_length": 16},
        },
    }
    datamodule = instantiate_module(LightningDataModule, json.loads(json.dumps(config)))
    expected = datamodule.tokenizer(CAPTIONS)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel(), datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["TinyData"] == {"tokenizer": {"tokenizer_json": path.read_text()}}

    for change in ("retrained", "deleted"):
        if change == "retrained":  # same path, another vocabulary: the run's own must still come back
            (tmp_path / "other.txt").write_text("completely different words here\n" * 5)
            train(
                ["train", "--captions", str(tmp_path / "other.txt"), "--out", str(path.parent), "--min-frequency", "1"]
            )
            assert not torch.equal(BPETokenizer(str(path), 16)(CAPTIONS), expected)
        else:
            path.unlink()
        restored_config = json.loads(json.dumps(config))
        _restore_tokenizer(restored_config, checkpoint)
        restored = instantiate_module(LightningDataModule, restored_config)
        assert torch.equal(restored.tokenizer(CAPTIONS), expected), change

    with pytest.raises(
        (UserError, ValueError), match="not found"
    ):  # without the checkpoint's state (jsonargparse wraps the error)
        instantiate_module(LightningDataModule, json.loads(json.dumps(config)))
    unrelated = json.loads(json.dumps(config))
    _restore_tokenizer(unrelated, {"OtherData": checkpoint["TinyData"]})  # another datamodule's state is not used
    assert unrelated == config
