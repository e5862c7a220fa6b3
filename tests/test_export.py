"""Bridges out (``python -m analysis export``): a checkpoint as an open_clip model with equal
embeddings, CLIP_benchmark's own command line on it agreeing with ``analysis zeroshot``, both towers
as ONNX graphs equal under onnxruntime, and what open_clip's CLIP cannot hold refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.__main__ import run as analysis
from analysis.checkpoint import LoadedCheckpoint, load_checkpoint
from analysis.export.open_clip import export_open_clip
from common.errors import UserError
from datamodules.shapesworld.world import render, sample_scene
from datamodules.tokenizer import CLIPTokenizer, WordTokenizer
from datamodules.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, TokenwiseInfoNCE
from variants.towers import TextTower, VisionTower

from helpers import CONFIGS, REPO

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a red circle", "two blue squares and a green star", "zebra giraffe circle", "a " * 60 + "star"]


def _scenes(n: int, size: int = 64) -> list[Image.Image]:
    rng = __import__("random").Random(0)
    return [Image.fromarray(render(sample_scene(rng, size, 3), size).permute(1, 2, 0).numpy()) for _ in range(n)]


def _ours(loaded: LoadedCheckpoint, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        pixels = torch.stack([loaded.image_transform(image) for image in images])
        return loaded.model.vision_tower(pixels)[0], loaded.model.text_tower(loaded.tokenizer(texts))[0]


def test_the_demo_checkpoint_loads_in_open_clip_with_equal_embeddings(trained_run, tmp_path: Path) -> None:
    """Word-level tokenizer (ShapesWorld's): written as a Hugging Face tokenizer that open_clip's
    get_tokenizer loads; images through open_clip's own preprocessing, texts through its tokenizer."""
    run = trained_run("clip")
    out = tmp_path / "oc"
    result = analysis(["export", "--ckpt", str(run), "--format", "open_clip", "--out", str(out), "--name", "demo-x"])
    assert result["tokenizer"] == "hf (tokenizer.json)" and (out / "USAGE.md").is_file()
    loaded = load_checkpoint(run)
    images = _scenes(5)
    image_ours, text_ours = _ours(loaded, images, TEXTS)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    assert torch.equal(tokenizer(TEXTS), loaded.tokenizer(TEXTS))  # unknown words and truncation included
    with torch.no_grad():
        image_theirs = model.encode_image(torch.stack([preprocess(image) for image in images]), normalize=True)
        text_theirs = model.encode_text(tokenizer(TEXTS), normalize=True)
    assert (image_theirs - image_ours).abs().max() < 1e-5
    assert (text_theirs - text_ours).abs().max() < 1e-5
    scale = next(t for t in loaded.model.terms.values()).logit_scale()
    torch.testing.assert_close(model.logit_scale.exp(), scale)
    # By name, as open_clip's own models load: the config registered, the weights as `pretrained`.
    open_clip.add_model_config(str(out))
    mean, std = loaded.image_transform.mean, loaded.image_transform.std
    by_name, _, preprocess = open_clip.create_model_and_transforms(
        "demo-x", pretrained=str(out / "open_clip_model.safetensors"), image_mean=mean, image_std=std
    )
    with torch.no_grad():
        again = by_name.eval().encode_image(torch.stack([preprocess(image) for image in images]), normalize=True)
    assert (again - image_ours).abs().max() < 1e-5
    assert torch.equal(open_clip.get_tokenizer("demo-x")(TEXTS), loaded.tokenizer(TEXTS))


def _loaded(tmp_path: Path, text: torch.nn.Module, tokenizer, terms=None, vision=None) -> LoadedCheckpoint:
    vision = vision or VisionTower("resnet10t", embed_dim=32)
    model = ContrastiveModule(vision, text, terms or [InfoNCE()]).eval()
    return LoadedCheckpoint(
        model, tokenizer, EvalImageTransform(32, CLIP_MEAN, CLIP_STD), None, tmp_path / "x.ckpt", "x", 0
    )  # type: ignore[arg-type]


def test_a_clip_bpe_checkpoint_uses_open_clips_own_tokenizer(tmp_path: Path) -> None:
    loaded = _loaded(
        tmp_path, TextTower(49408, context_length=77, width=64, depth=2, heads=2, embed_dim=32), CLIPTokenizer()
    )
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the initialisation: every weight must land in place
    out = tmp_path / "bpe"
    export_open_clip(loaded, out, "bpe-x")
    assert not (out / "tokenizer.json").exists()
    config = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert config["pool_type"] == "argmax" and "hf_tokenizer_name" not in config
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    texts = ["A photo of a Cat!", "naïve café — 手写的数字七", "x " * 100]
    assert torch.equal(tokenizer(texts), loaded.tokenizer(texts))
    image_ours, text_ours = _ours(loaded, _scenes(3, 32), texts)
    with torch.no_grad():
        text_theirs = model.eval().encode_text(tokenizer(texts), normalize=True)
        pixels = torch.stack([loaded.image_transform(image) for image in _scenes(3, 32)])
        image_theirs = model.encode_image(pixels, normalize=True)
    assert (text_theirs - text_ours).abs().max() < 1e-5 and (image_theirs - image_ours).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("filip", "its scoring term TokenwiseInfoNCE ranks pairs by token-wise similarity"),
        ("bidirectional", "its text tower is bidirectional or pools the first/mean token"),
        ("hf", "its text tower is HFTextTower, not the suite.s TextTower"),
        ("vit-kwargs", "its timm vision model is built with model_kwargs"),
    ],
)
def test_what_open_clip_cannot_express_is_refused_with_the_reason(case: str, message: str, tmp_path: Path) -> None:
    tokenizer = WordTokenizer(["a", "red", "circle"], context_length=8)
    text: torch.nn.Module = TextTower(tokenizer.vocab_size, 8, width=16, heads=2, depth=1, embed_dim=32)
    terms, vision = None, None
    if case == "filip":
        terms = [TokenwiseInfoNCE(token_dim=16)]
    elif case == "bidirectional":
        text = TextTower(tokenizer.vocab_size, 8, width=16, heads=2, depth=1, embed_dim=32, causal=False, pool="first")
    elif case == "hf":
        pytest.importorskip("transformers")
        from variants.hf_text import HFTextTower

        config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
        text = HFTextTower(tokenizer.vocab_size, 8, embed_dim=32, config=config)
    else:
        vision = VisionTower("vit_tiny_patch16_224", embed_dim=32, model_kwargs={"img_size": 32, "patch_size": 8})
    with pytest.raises(
        UserError, match="cannot become an open_clip model: " + message.replace("(", r"\(").replace(")", r"\)")
    ):
        export_open_clip(_loaded(tmp_path, text, tokenizer, terms, vision), tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()


def test_clip_benchmarks_own_cli_reproduces_analysis_zeroshot(trained_run, tmp_path: Path) -> None:
    """The suite written as CLIP_benchmark datasets (images at the model's size, the exact prompts),
    the model as open_clip; CLIP_benchmark's CLI (``clip_benchmark eval``, through the module that
    fixes its NumPy 2 bug) gives the accuracies ``analysis zeroshot`` gives on the same images."""
    pytest.importorskip("clip_benchmark")
    run = str(trained_run("clip"))
    common = ["--suite", "shapesworld", "--samples", "48"]
    analysis(["export", "--ckpt", run, "--format", "open_clip", "--out", str(tmp_path / "oc")])
    written = analysis(["export", "--ckpt", run, "--format", "clip_benchmark", *common, "--model-dir",
                        str(tmp_path / "oc"), "--out", str(tmp_path / "cb")])  # fmt: skip
    analysis(["zeroshot", "--ckpt", run, *common, "--no-linear-probe", "--out", str(tmp_path / "zs")])
    records = {
        r["dataset"]: r["metrics"] for r in json.loads((tmp_path / "zs" / "zeroshot.json").read_text())["records"]
    }
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for suite in ("shapesworld/shape", "shapesworld/color_shape_heldout"):
        words = written["commands"][suite].split()[3:]  # after "python -m analysis.export.clip_benchmark_cli"
        output = tmp_path / f"{suite.replace('/', '-')}.json"
        done = subprocess.run(
            [sys.executable, "-m", "analysis.export.clip_benchmark_cli", *words, "--output", str(output), "--quiet"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        theirs = json.loads(output.read_text())["metrics"]
        ours = records[suite]
        # equal counts of right answers (ours are float32 fractions: 1e-6 is far below one image in 48)
        assert theirs["acc1"] == pytest.approx(ours["acc1"], abs=1e-6), suite
        assert theirs["mean_per_class_recall"] == pytest.approx(ours["mean_per_class_recall"], abs=1e-6), suite
        assert theirs["acc5"] == pytest.approx(ours["acc5"], abs=1e-6), suite


@pytest.mark.parametrize("towers", ["resnet", "vit"])
def test_onnx_towers_equal_pytorch_at_any_batch_size(towers: str, trained_run, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    extra = ("--config", str(CONFIGS / "towers" / "vit.yaml")) if towers == "vit" else ()
    run = trained_run("clip", *extra)
    result = analysis(["export", "--ckpt", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert max(result["max_abs_diff"].values()) < 1e-4
    loaded = load_checkpoint(run)
    for batch in (1, 7):
        images = _scenes(batch)
        texts = (TEXTS * 2)[:batch]
        image_ours, text_ours = _ours(loaded, images, texts)
        pixels = torch.stack([loaded.image_transform(image) for image in images]).numpy()
        image = ort.InferenceSession(str(tmp_path / "onnx" / "image.onnx")).run(None, {"image": pixels})[0]
        text = ort.InferenceSession(str(tmp_path / "onnx" / "text.onnx")).run(
            None, {"text": loaded.tokenizer(texts).numpy()}
        )[0]
        assert np.abs(image - image_ours.numpy()).max() < 1e-4 and np.abs(text - text_ours.numpy()).max() < 1e-4
    preprocess = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    assert preprocess["image_size"] == 64 and preprocess["mean"] == list(loaded.image_transform.mean)
    if towers == "vit":  # ONNX takes what open_clip's timm_model_name cannot
        with pytest.raises(UserError, match="model_kwargs .* open_clip builds a timm tower by name only"):
            export_open_clip(loaded, tmp_path / "oc", "vit")
