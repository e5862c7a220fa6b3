"""``python -m analysis search``: the top k of a FAISS index equal a brute-force cosine ranking, the
folder is embedded once and re-embedded when it or the checkpoint changes, unreadable images are
skipped and counted, and the HTML page shows the results."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from analysis.__main__ import run as analysis
from analysis.checkpoint import load_checkpoint
from analysis.embed import embed_images, embed_texts
from datamodules.shapesworld.world import render, sample_scene
from datamodules.suites.files import ImageFiles

pytest.importorskip("faiss")


def _folder(root: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    for i in range(n):
        pixels = render(sample_scene(rng, 64, 2), 64).permute(1, 2, 0).numpy()
        folder = root / ("a" if i % 2 else "b")  # searched recursively
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    (root / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image either, and not an image file")
    return root


def test_top_k_equal_a_brute_force_cosine_ranking(trained_run, tmp_path: Path) -> None:
    run = trained_run("clip")
    images, out = _folder(tmp_path / "images"), tmp_path / "out"
    with pytest.warns(UserWarning, match="skipped 1 unreadable images of 25: broken.png"):
        result = analysis(["search", "--ckpt", str(run), "--images", str(images), "--text", "a red circle", "--k", "5", "--out", str(out)])  # fmt: skip
    assert result["indexed"] == 24 and result["skipped"] == {"count": 1, "files": ["broken.png"]}
    assert result["index_rebuilt"] and [r["rank"] for r in result["results"]] == [1, 2, 3, 4, 5]
    loaded = load_checkpoint(run)
    paths = sorted(p for p in images.rglob("*.png") if p.name != "broken.png")
    embedded = embed_images(loaded, ImageFiles(paths)).encoded.image
    cosine = embedded @ embed_texts(loaded, ["a red circle"]).text[0]
    scores, order = cosine.sort(descending=True)
    assert [r["path"] for r in result["results"]] == [str(paths[i].resolve()) for i in order[:5]]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result["results"]]), scores[:5], atol=1e-5, rtol=0)
    page = (out / "search.html").read_text()
    assert page.count("<figure>") == 5 and "a red circle" in page and "data:image/png;base64," in page

    by_image = analysis(["search", "--ckpt", str(run), "--images", str(images), "--image", str(paths[3]), "--out", str(out)])  # fmt: skip
    assert not by_image["index_rebuilt"]  # the cache: same folder, same checkpoint
    assert by_image["results"][0]["path"] == str(paths[3].resolve()) and by_image["results"][0]["score"] > 0.999
    assert len(by_image["results"]) == 10

    Image.open(paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "new.png")
    again = analysis(["search", "--ckpt", str(run), "--images", str(images), "--text", "a red circle", "--out", str(out)])  # fmt: skip
    assert again["index_rebuilt"] and again["indexed"] == 25
    checkpoint = run / "checkpoints" / "last.ckpt"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    assert analysis(["search", "--ckpt", str(run), "--images", str(images), "--text", "a star", "--out", str(out)])["index_rebuilt"]  # fmt: skip
    assert list(out.rglob("*.pt"))
    for cached in out.rglob("*.pt"):  # a damaged cache is rebuilt, not a traceback
        cached.write_bytes(b"not a torch file")
    assert analysis(["search", "--ckpt", str(run), "--images", str(images), "--text", "a star", "--out", str(out)])["index_rebuilt"]  # fmt: skip
